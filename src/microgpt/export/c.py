"""Export a checkpoint as a C99 program that makes up names on a microcontroller, and its memory budget.

`export_c` writes DIR/weights.h (configuration, vocabulary and weights as const arrays, which stay in
flash) next to copies of c_template/microgpt_names.c (the model with a static KV cache, no malloc) and
c_template/microgpt_common.h (matvec, splitmix64, sampling and argument parsing, shared with microgpt_train.c).
The tests hold a Python mirror of the program (tests/c_mirror.py) to check its logits and names.
"""

import math
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..config import num_parameters, parameter_shapes
from ..errors import MicrogptError
from ..tempfiles import folder_for, folder_problem, write_texts

C_SOURCE = 'microgpt_names.c'
C_HEADER = 'weights.h'
COMMON_HEADER = 'microgpt_common.h'  # matvec, splitmix64, sampling, argument parsing: shared with microgpt_train.c
BUILD_COMMAND = 'cc -std=c99 -O2 -Wall -Wextra -pedantic -o microgpt_names microgpt_names.c -lm'
TOKEN_BYTES = 5  # the longest UTF-8 character (4 bytes) and its NUL: token_text is (V, 5) chars
FLOAT_BYTES = 4
STDOUT_BUFFER_BYTES = 64  # microgpt_common.h's stdout_buffer, static where newlib would take 1 KB of heap


@dataclass(frozen=True)
class ExportInfo:
    out_dir: str
    files: tuple          # the paths written
    build_command: str    # run in out_dir
    memory: list          # memory_budget rows


def export_c(ckpt, out_dir):
    """Write the C program of `ckpt` (a checkpoint.Checkpoint) into out_dir; MicrogptError if it cannot."""
    cfg, vocab = ckpt.model_cfg, ckpt.vocab
    _check_exportable(ckpt)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MicrogptError(f"{out_dir}: exists and is not a directory; give a directory for the C program")
    files = write_program(out_dir, C_HEADER, weights_header(ckpt.weights, cfg, vocab), C_SOURCE)
    return ExportInfo(out_dir, files, BUILD_COMMAND, memory_budget(cfg))


def write_program(out_dir, header, header_text, source):
    """Write out_dir/header, the template `source` and microgpt_common.h (the code both C programs share)
    beside it; the paths written. MicrogptError if the folder cannot be written."""
    templates = resources.files('microgpt.export') / 'c_template'
    texts = {header: header_text, source: (templates / source).read_text(encoding='utf-8'),
             COMMON_HEADER: (templates / COMMON_HEADER).read_text(encoding='utf-8')}
    files = tuple(os.path.join(out_dir, name) for name in texts)
    try:
        with folder_for(out_dir) as written:
            write_texts(dict(zip(files, texts.values())))  # all or none: a full disk leaves no truncated weights.h
            written.extend(files)
    except OSError as e:
        if e.filename in files:
            raise MicrogptError(f"{e.filename}: cannot write the C program: {e.strerror}") from None
        # a file or a dead link in the way of the folder
        raise MicrogptError(f"{out_dir}: cannot write the C program: {folder_problem(out_dir, e)}") from None
    return files


def check_c_vocabulary(cfg, vocab, remedy):
    """Refuse a vocabulary that does not fit the model, or that holds a character a C string cannot print."""
    if vocab.size != cfg.vocab_size or vocab.bos_first != (cfg.bos == 'first'):
        bos = 'first' if vocab.bos_first else 'last'
        raise MicrogptError(f"the vocabulary ({vocab.size} tokens, BOS {bos}) does not match the model "
                            f"({cfg.vocab_size} tokens, BOS {cfg.bos}); {remedy}")
    for ch in vocab.chars:
        if ch == '\0' or 0xD800 <= ord(ch) <= 0xDFFF:
            raise MicrogptError(f"the vocabulary holds {ch!r}, which a C string cannot print; "
                                f"use data without it")


def _check_exportable(ckpt):
    cfg = ckpt.model_cfg
    check_c_vocabulary(cfg, ckpt.vocab, "the checkpoint is damaged; re-train it")
    for name, shape in parameter_shapes(cfg).items():
        w = np.asarray(ckpt.weights.get(name, np.zeros(0)))
        if w.shape != shape:
            raise MicrogptError(f"weight {name} is missing or not of shape {shape}; export a checkpoint "
                                f"that `microgpt sample` can load")
        with np.errstate(over='ignore'):
            if not np.all(np.isfinite(w.astype(np.float32))):
                raise MicrogptError(f"weight {name} holds values that are NaN or infinite in float32 (the C "
                                    f"program's precision); export an earlier checkpoint of the run")
    check_float32_logits(ckpt.weights, cfg)


FLOAT32_LOGITS_TOLERANCE = 1e-3  # relative to the largest logit: float32's rounding alone is about 1e-6


def check_float32_logits(weights, cfg):
    """MicrogptError unless the model's logits in float32, the C programs' and the page's precision, are its float64
    logits within FLOAT32_LOGITS_TOLERANCE, at every position of a greedy sample. Weights that float32 holds can
    still overflow in it: a diverged run's 1e20 weights square to infinity in RMSNorm, every logit became 0, and
    the programs sampled uniform noise without a word."""
    from ..engines.numpy.decoder import NumpyDecoder
    decoders = [NumpyDecoder(cfg, {name: np.asarray(w, dtype) for name, w in weights.items()}, dtype)
                for dtype in ('float64', 'float32')]
    token = cfg.bos_id
    for pos in range(cfg.block_size):
        exact, rounded = (np.asarray(decoder.step(token, pos), np.float64) for decoder in decoders)  # (V,) each
        largest = float(np.max(np.abs(exact)))
        if not (np.all(np.isfinite(rounded)) and math.isfinite(largest)
                and np.max(np.abs(rounded - exact)) <= FLOAT32_LOGITS_TOLERANCE * max(1.0, largest)):
            raise MicrogptError(f"the model's logits in float32, the precision the C programs and the page compute "
                                f"in, are not its own (position {pos}: largest {float(np.max(np.abs(rounded))):.3g} "
                                f"against {largest:.3g}): its weights are too large, as after a diverging run; "
                                f"export an earlier checkpoint of the run, or train again with a lower --lr")
        token = int(np.argmax(exact))


# ---- weights.h

def weights_header(weights, cfg, vocab):
    """The text of weights.h: #defines of the configuration, the token table, the weights in float32."""
    shapes = parameter_shapes(cfg)
    out = [
        f'/* weights.h: a microgpt model of {num_parameters(cfg)} parameters, written by `microgpt export`.',
        f' * Build: {BUILD_COMMAND} */',
        '#ifndef MICROGPT_WEIGHTS_H', '#define MICROGPT_WEIGHTS_H', '',
        f'#define VOCAB_SIZE {cfg.vocab_size}  /* V: the characters and BOS */',
        f'#define N_EMBD {cfg.n_embd}  /* C */', f'#define N_HEAD {cfg.n_head}  /* NH */',
        f'#define HEAD_DIM {cfg.head_dim}  /* HS = C / NH */', f'#define N_LAYER {cfg.n_layer}',
        f'#define BLOCK_SIZE {cfg.block_size}  /* T: the longest context */',
        f'#define BOS_ID {cfg.bos_id}',
        f'#define STDOUT_BUFFER_BYTES {STDOUT_BUFFER_BYTES}  /* microgpt_common.h: standard output, static */',
        f'#define NORM_EMBEDDING {int(cfg.norm == "microgpt")}  /* norm = {cfg.norm} */',
        f'#define NORM_BEFORE_ATTN {int(cfg.norm != "none")}',
        f'#define NORM_BEFORE_MLP {int(cfg.norm == "microgpt")}',
        f'#define MLP_RELU2 {int(cfg.mlp_activation == "relu2")}  /* mlp_activation = {cfg.mlp_activation} */',
        f'#define ATTENTION_SELF {int(cfg.attention == "self")}  /* attention = {cfg.attention} */',
        f'#define ATTN_SCALE {c_float(attention_scale(cfg))}  /* float32 of 1 / sqrt(HEAD_DIM) */',
        f'#define LM_HEAD {"wte" if cfg.tie_lm_head else "lm_head"}  /* tie_lm_head = {cfg.tie_lm_head} */',
        f'#define VOCAB_CHARS {c_string(vocab.chars)}  /* the characters in token order, UTF-8; BOS excluded */',
        '',
        '/* the UTF-8 bytes of each token; BOS prints nothing */',
        f'static const char token_text[VOCAB_SIZE][{TOKEN_BYTES}] = {{',
    ]
    texts = [''] * cfg.vocab_size
    for ch, token_id in vocab.index.items():
        texts[token_id] = ch
    out += ['    ' + ', '.join(c_string(text) for text in texts[i:i + 16]) + ',' for i in range(0, len(texts), 16)]
    out.append('};')
    for name, (rows, cols) in shapes.items():
        values = np.asarray(weights[name], np.float32).ravel()
        out.append(f'\nstatic const float {_c_name(name)}[{rows} * {cols}] = {{  /* ({rows}, {cols}) {name} */')
        out += ['    ' + ', '.join(c_float(v) for v in values[i:i + 8]) + ',' for i in range(0, values.size, 8)]
        out.append('};')
    out += ['', '/* X(layer, attn_wq, attn_wk, attn_wv, attn_wo, mlp_fc1, mlp_fc2) for each layer, in order */',
            '#define FOR_EACH_LAYER(X) \\']
    out += ['    X(' + ', '.join([str(i)] + [_c_name(f'layer{i}.{kind}') for kind in
                                            ('attn_wq', 'attn_wk', 'attn_wv', 'attn_wo', 'mlp_fc1', 'mlp_fc2')])
            + (') \\' if i < cfg.n_layer - 1 else ')') for i in range(cfg.n_layer)]
    out += ['', '#endif', '']
    return '\n'.join(out)


def _c_name(name):
    return name.replace('.', '_')


def c_float(value):
    """A C float literal that parses back to exactly this float32 (9 significant digits suffice)."""
    text = f'{float(np.float32(value)):.9g}'
    if '.' not in text and 'e' not in text:
        text += '.0'
    return text + 'f'


def c_string(text):
    """A C99 string literal of text's UTF-8 bytes; non-ASCII and control bytes as \\x escapes."""
    out, after_hex = ['"'], False
    for byte in text.encode('utf-8'):
        ch = chr(byte)
        if after_hex and ch in '0123456789abcdefABCDEF':
            out.append('" "')  # a hex escape would swallow a following hex digit
        after_hex = not 0x20 <= byte < 0x7f
        out.append(f'\\x{byte:02x}' if after_hex else '\\' + ch if ch in '"\\' else ch)
    return ''.join(out) + '"'


def attention_scale(cfg):
    return np.float32((cfg.head_dim ** 0.5) ** -1)  # the engines' constant, rounded as they round it


# ---- the memory a device needs

def memory_budget(cfg):
    """(item, bytes) rows: flash and RAM of microgpt_names.c (training: c_train.training_memory_budget).

    Letters: P parameters, V vocabulary, C n_embd, T block_size, L n_layer; 4 bytes a float32.
    Flash: the weights, P * 4, and the token table, V * 5 chars.
    RAM of inference: exactly the C program's static buffers:
      KV cache     kv_keys + kv_values              2 * L * T * C floats
      activations  act_x, act_xn, act_q, act_y (C each), act_h (4C), act_att (T), act_logits (V)
                                                    8C + T + V floats
      PRNG state   rng_state                        8 bytes
      stdout       stdout_buffer                    STDOUT_BUFFER_BYTES
    """
    P, V, C, T, L = num_parameters(cfg), cfg.vocab_size, cfg.n_embd, cfg.block_size, cfg.n_layer
    kv_cache = 2 * L * T * C * FLOAT_BYTES
    activations = (8 * C + T + V) * FLOAT_BYTES
    rng_state = 8
    state = P * FLOAT_BYTES
    inference_ram = kv_cache + activations + rng_state + STDOUT_BUFFER_BYTES
    return [
        ('flash: weights (float32)', state),
        ('flash: token table', V * TOKEN_BYTES),
        ('inference RAM: KV cache', kv_cache),
        ('inference RAM: activations', activations),
        ('inference RAM: PRNG state', rng_state),
        ('inference RAM: standard output buffer', STDOUT_BUFFER_BYTES),
        ('inference RAM: total', inference_ram),
    ]
