"""Export a C99 program that trains microgpt on a microcontroller, and the RAM it takes.

`export_c_train` writes DIR/train_data.h (configuration, parameter table, vocabulary, the training documents
as token ids and, optionally, initial weights, all const: they stay in flash) next to copies of
c_template/microgpt_train.c (forward, backward, Adam and sampling in static buffers, no malloc) and of
c_template/microgpt_common.h (the code it shares with the inference program).
`training_memory_budget` counts that program's static buffers byte for byte: a test compares it with the
symbols of the compiled object.

Documents are stored as one token stream, BOS doc1 BOS doc2 BOS ... BOS, in the order given (the CLI
shuffles them as microgpt does); the program takes them in that order, one per step, wrapping around.
"""

import os
import numpy as np

from ..config import LAYER_PARAMETERS, MLP_EXPANSION, RMSNORM_EPS, TrainConfig, num_parameters, parameter_table
from ..errors import MicrogptError, NotData
from ..fetch import local_path
from .c import (STDOUT_BUFFER_BYTES, TOKEN_BYTES, ExportInfo, attention_scale, c_float, c_string, check_c_vocabulary,
                check_float32_logits, write_program)

C_SOURCE = 'microgpt_train.c'
C_HEADER = 'train_data.h'
BUILD_COMMAND = 'cc -std=c99 -O2 -Wall -Wextra -pedantic -o microgpt_train microgpt_train.c -lm'
RAM_LIMIT = 96 * 1024            # bytes a normal build may take: the ESP32 port's class of device
LOW_MEMORY_RAM_LIMIT = 64 * 1024  # bytes a --low-memory build may take
TEMPERATURE = 0.5                # microgpt's sampling temperature
GRADCHECK_PER_TENSOR = 3         # elements of each parameter matrix that --gradcheck checks
GRADCHECK_STEP = 1e-2            # finite-difference step: the loss is float32, so h cannot be small
GRADCHECK_FLOOR = 1e-2           # relative error = |a - n| / (|a| + |n| + floor): tiny gradients compare absolutely
GRADCHECK_TOLERANCE = 0.01      # measured at most 0.0036 where no ReLU changes sign within the step
FLOAT_BYTES, INT_BYTES, RNG_BYTES = 4, 4, 8


def token_bytes(cfg):
    """Bytes of the C program's token_t: unsigned char up to 256 tokens, else unsigned short."""
    return 1 if cfg.vocab_size <= 256 else 2


def training_memory_budget(cfg, low_memory=False):
    """(item, bytes) rows: every static buffer of microgpt_train.c, then the total (its data + bss).

    Letters: P parameters, V vocabulary, C n_embd, T block_size, L n_layer, NH n_head, H = 4C the MLP width.
    Per layer the forward pass keeps xn, y, xn2 (TC each), k and v (2TC) and two RMSNorm scales (T); the
    normal build also keeps q (TC), relu(fc1 xn2) (TH, later the gradients of q, k, v) and the attention
    probabilities (NH T T). The low-memory build keeps no gradients (Adam updates each element when its
    gradient is complete), recomputes q, the MLP's hidden units and the attention probabilities in the
    backward pass, and keeps one layer's activations plus the input of each earlier layer.
    """
    P, V, C, T, L, NH = num_parameters(cfg), cfg.vocab_size, cfg.n_embd, cfg.block_size, cfg.n_layer, cfg.n_head
    H = MLP_EXPANSION * C
    f = FLOAT_BYTES
    rows = [('parameters', P * f), ('Adam m', P * f), ('Adam v', P * f)]
    if low_memory:
        rows.append(('activations of one layer', (5 * T * C + 2 * T) * f))
        if L > 1:
            rows.append(('inputs of the earlier layers', ((L - 1) * T * C + C) * f))
        rows.append(('gradients of q, k, v', 3 * T * C * f))
    else:
        rows.append(('gradients', P * f))
        rows.append((f'activations of {L} layer(s)', L * (6 * T * C + T * H + 2 * T + NH * T * T) * f))
    rows += [
        ('residual stream', T * C * f),
        ('logits, then a normalised input\'s gradient', max(T * V, T * C) * f),
    ]
    if cfg.tie_lm_head:
        rows.append(("wte's gradient as lm_head", V * C * f))
    tensors = len(parameter_table(cfg))
    rows += [
        ('rows of one position', (2 * T + H + ((T + C) if low_memory else 0)) * f),
        ('sampled name', T * token_bytes(cfg)),
        ('step constants, PRNG, gradcheck', 3 * f + RNG_BYTES + INT_BYTES + tensors * GRADCHECK_PER_TENSOR * f),
        ('standard output buffer', STDOUT_BUFFER_BYTES),
    ]
    rows.append(('total', sum(size for _, size in rows)))
    return rows


def budget_total(cfg, low_memory=False):
    return training_memory_budget(cfg, low_memory)[-1][1]


def export_c_train(out_dir, docs, cfg, vocab, tcfg=None, init_weights=None, low_memory=False, ram_limit=None):
    """Write the training program for `cfg` on `docs` (strings, in training order) into out_dir.

    init_weights (name -> (rows, cols), e.g. a checkpoint's) are compiled in as the starting point;
    without them the device draws microgpt's init from its seed. tcfg gives lr, betas, eps and the default
    number of steps. ram_limit (bytes; default 96 KB, or 64 KB with low_memory) refuses larger models.
    Raises MicrogptError, having written nothing, when any of this cannot be done.
    """
    tcfg = TrainConfig() if tcfg is None else tcfg
    _check_trainable(cfg, vocab, tcfg)
    if ram_limit is not None and ram_limit < 1:
        raise MicrogptError(f"--ram must be a number of bytes of at least 1, got {ram_limit}")
    limit = (LOW_MEMORY_RAM_LIMIT if low_memory else RAM_LIMIT) if ram_limit is None else ram_limit
    need = budget_total(cfg, low_memory)
    if need > limit:
        hint = "" if low_memory else ", --low-memory,"
        raise MicrogptError(f"training this model on the device needs {need:,} bytes of RAM, more than the "
                            f"{limit:,} allowed; give a smaller model{hint} or a larger --ram")
    tokens = _document_stream(docs, vocab, cfg.block_size)
    weights = None if init_weights is None else _check_weights(init_weights, cfg)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MicrogptError(f"{out_dir}: exists and is not a directory; give a directory for the C program")
    header = train_header(cfg, vocab, tcfg, tokens, len(docs), weights, low_memory)
    files = write_program(out_dir, C_HEADER, header, C_SOURCE)
    return ExportInfo(out_dir, files, BUILD_COMMAND, training_memory_budget(cfg, low_memory))


def _check_trainable(cfg, vocab, tcfg):
    """Refuse what microgpt_train.c does not express: it runs microgpt's recipe, one document a step."""
    cfg.validate()
    tcfg.validate()
    check_c_vocabulary(cfg, vocab, "build the vocabulary from the training data")
    if cfg.vocab_size > 65536:
        raise MicrogptError(f"the C program stores tokens in 16 bits, and this vocabulary has {cfg.vocab_size} "
                            f"tokens; train on data with fewer distinct characters")
    unsupported = [(name, value) for name, value, plain in (
        ('batch_size', tcfg.batch_size, 1), ('weight_decay', tcfg.weight_decay, 0.0),
        ('grad_clip', tcfg.grad_clip, 0.0), ('lr_schedule', tcfg.lr_schedule, 'linear'),
        ('warmup', tcfg.warmup, 0), ('dropout', tcfg.dropout, 0.0)) if value != plain]
    if unsupported:
        name, value = unsupported[0]
        raise MicrogptError(f"the C training program runs microgpt's recipe (one document a step, Adam, linear "
                            f"decay), not {name}={value}; export with that setting at microgpt's default")
    table = {p.name: p for p in parameter_table(cfg)}
    for layer in range(cfg.n_layer):
        q, k, v = (table[f'layer{layer}.{kind}'] for kind in ('attn_wq', 'attn_wk', 'attn_wv'))
        if not (k.offset == q.offset + q.size and v.offset == k.offset + k.size):
            raise MicrogptError("the parameter table no longer keeps attn_wq, attn_wk, attn_wv adjacent, which "
                                "microgpt_train.c reads as one (3C, C) matrix; update the C template")


def _document_stream(docs, vocab, block_size):
    """BOS doc1 BOS doc2 ... BOS as token ids, each document cut to its first block_size characters: a step
    predicts at most block_size tokens, from BOS and those characters (a 5 MB line took 10 MB of flash for 16 of
    them). MicrogptError for no documents or a character outside vocab."""
    if not docs:
        raise MicrogptError("no training documents; give a text file with one item per line")
    stream = [vocab.bos_id]
    for doc in docs:
        if not doc:
            raise MicrogptError("an empty document cannot be trained on; give non-blank lines")
        stream += vocab.encode(doc[:block_size]) + [vocab.bos_id]
    return stream


def _check_weights(weights, cfg):
    flat = []
    for p in parameter_table(cfg):
        w = np.asarray(weights.get(p.name, np.zeros(0)))
        if w.shape != p.shape:
            raise MicrogptError(f"initial weight {p.name} is missing or not of shape {p.shape}; give a "
                                f"checkpoint of this model")
        with np.errstate(over='ignore'):
            w = w.astype(np.float32)
        if not np.all(np.isfinite(w)):
            raise MicrogptError(f"initial weight {p.name} holds values that are NaN or infinite in float32; "
                                f"export an earlier checkpoint of the run")
        flat.append(w.ravel())
    check_float32_logits(weights, cfg)
    return np.concatenate(flat)


# ---- train_data.h

def _c_double(value):
    return repr(float(value))


def train_header(cfg, vocab, tcfg, tokens, n_docs, weights, low_memory):
    """The text of train_data.h. The layout (#defines, offsets, the parameter table) comes from
    config.parameter_table, so the C program never restates it."""
    table = parameter_table(cfg)
    by_name = {p.name: p for p in table}
    first = by_name['layer0.attn_wq']
    kinds = [kind for kind, _, _ in LAYER_PARAMETERS]
    out = [
        f'/* train_data.h: training microgpt ({num_parameters(cfg)} parameters) on {n_docs} documents, written by',
        f' * `microgpt export --train`. Build: {BUILD_COMMAND} */',
        '#ifndef MICROGPT_TRAIN_DATA_H', '#define MICROGPT_TRAIN_DATA_H', '',
        '/* ---- the model */',
        f'#define VOCAB_SIZE {cfg.vocab_size}  /* V: the characters and BOS */',
        f'#define N_EMBD {cfg.n_embd}  /* C */', f'#define N_HEAD {cfg.n_head}  /* NH */',
        f'#define HEAD_DIM {cfg.head_dim}  /* HS = C / NH */', f'#define N_LAYER {cfg.n_layer}',
        f'#define BLOCK_SIZE {cfg.block_size}  /* T: the longest context */',
        f'#define MLP_EXPANSION {MLP_EXPANSION}', f'#define BOS_ID {cfg.bos_id}',
        f'#define STDOUT_BUFFER_BYTES {STDOUT_BUFFER_BYTES}  /* microgpt_common.h: standard output, static */',
        f'#define NORM_EMBEDDING {int(cfg.norm == "microgpt")}  /* norm = {cfg.norm} */',
        f'#define NORM_BEFORE_ATTN {int(cfg.norm != "none")}',
        f'#define NORM_BEFORE_MLP {int(cfg.norm == "microgpt")}',
        f'#define RMSNORM_EPS {c_float(RMSNORM_EPS)}',
        f'#define MLP_RELU2 {int(cfg.mlp_activation == "relu2")}  /* mlp_activation = {cfg.mlp_activation} */',
        f'#define ATTENTION_SELF {int(cfg.attention == "self")}  /* attention = {cfg.attention} */',
        f'#define ATTN_SCALE {c_float(attention_scale(cfg))}  /* float32 of 1 / sqrt(HEAD_DIM) */',
        f'#define TIE_LM_HEAD {int(cfg.tie_lm_head)}',
        f'#define INIT_STD {_c_double(cfg.init_std)}',
        f'#define LOW_MEMORY {int(low_memory)}  /* no gradient buffer, attention recomputed in the backward */',
        '', '/* ---- training (doubles; the program rounds them to float32 where numpy does) */',
        f'#define LEARNING_RATE {_c_double(tcfg.lr)}', f'#define BETA1 {_c_double(tcfg.beta1)}',
        f'#define BETA2 {_c_double(tcfg.beta2)}', f'#define ADAM_EPS {_c_double(tcfg.eps)}',
        f'#define DEFAULT_STEPS {tcfg.steps}', f'#define TEMPERATURE {_c_double(TEMPERATURE)}',
        f'#define GRADCHECK_PER_TENSOR {GRADCHECK_PER_TENSOR}',
        f'#define GRADCHECK_STEP {c_float(GRADCHECK_STEP)}', f'#define GRADCHECK_FLOOR {_c_double(GRADCHECK_FLOOR)}',
        f'#define GRADCHECK_TOLERANCE {_c_double(GRADCHECK_TOLERANCE)}',
        '', '/* ---- the parameter table (config.parameter_table): one flat float buffer of N_PARAMS */',
        f'#define N_PARAMS {num_parameters(cfg)}L', f'#define N_TENSORS {len(table)}',
        f'#define OFFSET_WTE {by_name["wte"].offset}L', f'#define OFFSET_WPE {by_name["wpe"].offset}L',
        f'#define OFFSET_LM_HEAD {by_name["wte" if cfg.tie_lm_head else "lm_head"].offset}L',
        '/* offsets inside a layer, from its first parameter */',
    ]
    for layer in range(cfg.n_layer):
        start = by_name[f'layer{layer}.{kinds[0]}'].offset
        for kind in kinds:
            relative = by_name[f'layer{layer}.{kind}'].offset - start
            if relative != by_name[f'layer0.{kind}'].offset - first.offset:
                raise MicrogptError("the layers of the parameter table are not laid out alike; update the C template")
    out += [f'#define {kind.upper()} {by_name[f"layer0.{kind}"].offset - first.offset}L' for kind in kinds]
    out += ['static const long layer_offset[N_LAYER] = {  /* where each layer\'s parameters start */',
            '    ' + ', '.join(str(by_name[f'layer{layer}.{kinds[0]}'].offset) for layer in range(cfg.n_layer)),
            '};',
            'static const struct parameter {  /* no pointers, so the table needs no relocation: flash only */',
            f'    char name[{max(len(p.name) for p in table) + 1}];', '    long offset, rows, cols;',
            '    int zero_init;  /* drawn as zeros */',
            '} parameters[N_TENSORS] = {']
    out += [f'    {{"{p.name}", {p.offset}, {p.rows}, {p.cols}, {int(p.kind in cfg.zero_init)}}},' for p in table]
    out += ['};', '', '/* ---- vocabulary: the UTF-8 bytes of each token; BOS prints nothing */',
            f'typedef {"unsigned char" if token_bytes(cfg) == 1 else "unsigned short"} token_t;',
            f'static const char token_text[VOCAB_SIZE][{TOKEN_BYTES}] = {{']
    texts = [''] * cfg.vocab_size
    for ch, token_id in vocab.index.items():
        texts[token_id] = ch
    out += ['    ' + ', '.join(c_string(text) for text in texts[i:i + 16]) + ',' for i in range(0, len(texts), 16)]
    out += ['};', '', f'/* ---- the {n_docs} training documents in training order: BOS doc BOS doc ... BOS */',
            f'#define N_DOC_TOKENS {len(tokens)}L', 'static const token_t doc_tokens[N_DOC_TOKENS] = {']
    out += ['    ' + ','.join(str(t) for t in tokens[i:i + 40]) + ',' for i in range(0, len(tokens), 40)]
    out += ['};', '']
    if weights is None:
        out += ['#define HAS_INIT_WEIGHTS 0  /* the device draws the initial weights from its seed */']
    else:
        out += ['#define HAS_INIT_WEIGHTS 1  /* training starts from these weights, in parameter-table order */',
                'static const float init_weights[N_PARAMS] = {']
        out += ['    ' + ', '.join(c_float(v) for v in weights[i:i + 8]) + ',' for i in range(0, weights.size, 8)]
        out.append('};')
    out += ['', '#endif', '']
    return '\n'.join(out)


# ---- what `microgpt export --train` exports

def export_training_program(out_dir, checkpoint=None, data=None, low_memory=False, ram_limit=None, seed=None,
                            on_stream=None):
    """export_c_train for the command line. With a checkpoint: its model, vocabulary and weights (fine-tuning
    starts from them), its optimiser's lr, betas and eps (on microgpt's recipe: one document a step, linear
    decay), and its training data unless `data` is given (the run's training split: what it held out stays
    unseen); without: microgpt's model and optimiser on `data`
    (default: the bundled names), initialised on the device. Documents are shuffled by random.Random(seed)
    (default: microgpt's 42) as microgpt shuffles them. A run trained from a pipe is read from one, once
    on_stream(notice) has said so (recorded.recorded_data)."""
    import random
    from dataclasses import replace

    from ..config import ModelConfig
    from ..data import Vocabulary, bundled_dataset_path, load_documents, named_characters, shuffled
    tcfg, docs = TrainConfig(), None
    if checkpoint is not None:
        from ..train.checkpoint import load_checkpoint
        from ..train.recorded import trained_documents
        ckpt = load_checkpoint(checkpoint)
        if data is None:  # the run's training documents: what it held out stays unseen
            try:
                docs = trained_documents(ckpt, on_stream)
            except MicrogptError as e:  # a NotData already ends in advice on the file: this is the other way
                raise MicrogptError(f"{e}{', or' if isinstance(e, NotData) else ';'} give --data FILE") from None
            data = ckpt.meta['data_path']
        cfg, vocab, weights = ckpt.model_cfg, ckpt.vocab, ckpt.weights
        trained = ckpt.train_cfg
        tcfg = replace(tcfg, lr=trained.lr, beta1=trained.beta1, beta2=trained.beta2, eps=trained.eps)
    if docs is None:
        docs = load_documents(local_path(data or bundled_dataset_path()))
    docs = shuffled(docs, random.Random(tcfg.seed if seed is None else seed))
    if checkpoint is None:
        vocab = Vocabulary.from_documents(docs)
        cfg, weights = ModelConfig(vocab_size=vocab.size), None
    unknown = sorted(set(''.join(docs)) - set(vocab.chars))
    if unknown:
        raise MicrogptError(f"{data}: {named_characters(unknown)} not in the checkpoint's vocabulary; "
                            f"give data with only these characters: {vocab.chars!r}")
    return export_c_train(out_dir, docs, cfg, vocab, tcfg, weights, low_memory, ram_limit)
