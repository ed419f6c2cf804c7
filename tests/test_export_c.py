"""The C export: it builds warning-free, its logits match the NumPy engine's float32 decoder within 1e-5 (and
its Python mirror bit for bit), it prints the Python mirror's names, and its RAM is what memory_budget says.

Needs a C compiler `cc` (and `nm` for the memory test): skipped without one, failed in CI."""

import io
import random
import subprocess
from itertools import islice

import numpy as np
import pytest

from microgpt.train.checkpoint import load_checkpoint, save_checkpoint
from microgpt.config import ModelConfig, TrainConfig, num_parameters
from microgpt.data import Vocabulary
from microgpt.errors import MicrogptError
from c_mirror import logits_like_c, sample_like_c
from microgpt.export.c import BUILD_COMMAND, export_c, memory_budget
from microgpt.engines.numpy.engine import NumpyEngine
from microgpt.train.loop import train

from helpers import NAMES as ALL_NAMES, load_weights, newlib_heap_bytes, require_tool

NAMES = ALL_NAMES[:20]
# quotes, a backslash, multi-byte UTF-8 (a 4-byte emoji too) and hex digits right after a multi-byte character
UTF8_NAMES = ['zoë', 'josé', 'ñandú', 'øyvind', 'o"brien', 'back\\slash', 'ë1ea', 'ß', 'anaïs', '🙂bob']
LOGIT_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def c_compiler():
    require_tool('cc')


def checkpoint_of(tmp_path, cfg, vocab, docs, steps=30):
    """Train a float32 NumPy engine a few steps, save it, and load the checkpoint back."""
    engine = NumpyEngine(cfg, random.Random(0), 'float32')
    tcfg = TrainConfig(steps=steps, lr=0.02)
    for _ in islice(train(engine, [vocab.document_tokens(d) for d in docs], tcfg), steps):
        pass
    path = str(tmp_path / 'model.safetensors')
    save_checkpoint(path, engine, vocab, tcfg, steps, {})
    return load_checkpoint(path)


def build(ckpt, out_dir, *flags):
    info = export_c(ckpt, str(out_dir))
    cmd = info.build_command.split() + ['-Werror', *flags]
    proc = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, (cmd, proc.stderr)
    return info


def run_c(out_dir, *args):
    proc = subprocess.run([str(out_dir / 'microgpt_names'), *map(str, args)], capture_output=True, timeout=60)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout.decode('utf-8')


def engine_logits(ckpt, token_ids):
    engine = NumpyEngine(ckpt.model_cfg, random.Random(0), 'float32')
    load_weights(engine, ckpt.weights)
    decoder = engine.decoder()
    decoder.reset()
    for pos, token in enumerate(token_ids):
        logits = decoder.step(token, pos)
    return np.array(logits, np.float64)


def check_against_python(ckpt, out_dir):
    cfg, vocab = ckpt.model_cfg, ckpt.vocab
    rng = random.Random(5)
    sequences = [[cfg.bos_id], [cfg.bos_id] + vocab.encode(vocab.chars[:4]), [cfg.bos_id] * cfg.block_size,
                 [rng.randrange(cfg.vocab_size) for _ in range(cfg.block_size)],
                 [rng.randrange(cfg.vocab_size) for _ in range(7)]]
    for tokens in sequences:
        c_logits = np.array(run_c(out_dir, '--logits', *tokens).split(), np.float64)
        want = engine_logits(ckpt, tokens)
        assert c_logits.shape == (cfg.vocab_size,), c_logits.shape
        worst = np.abs(c_logits - want).max()
        assert worst <= LOGIT_TOLERANCE, (tokens, worst, c_logits, want)
        mirror = logits_like_c(ckpt.weights, cfg, tokens)
        assert np.array_equal(c_logits.astype(np.float32), mirror), (tokens, c_logits, mirror)  # %.9g round-trips
    for n, temperature, seed in ((25, 0.5, 42), (25, 1.0, 7), (10, 2.5, 2**64 - 1)):
        c_names = run_c(out_dir, n, repr(temperature), seed).split('\n')
        assert c_names[-1] == '', c_names  # every name ends with a newline
        want = sample_like_c(ckpt.weights, cfg, vocab, n, temperature, seed)
        assert c_names[:-1] == want, (n, temperature, seed, c_names, want)
        assert sum(len(name) for name in want) > n, want  # real names, not only empty ones
    return want


def test_default_model(tmp_path):
    vocab = Vocabulary.from_documents(NAMES)
    ckpt = checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES)
    info = build(ckpt, tmp_path / 'c')
    assert info.build_command == BUILD_COMMAND and BUILD_COMMAND in (tmp_path / 'c' / 'microgpt_names.c').read_text()
    check_against_python(ckpt, tmp_path / 'c')
    assert run_c(tmp_path / 'c', 3) == run_c(tmp_path / 'c', 3, 0.5, 42)  # the defaults: 0.5, seed 42


@pytest.mark.parametrize('switches', [  # the quick loop builds the first
    dict(tie_lm_head=True, mlp_activation='relu2', norm='esp32', bos='first', n_layer=2),  # esp32/zeroclaw-like
    pytest.param(dict(norm='none', attention='self', n_head=2, n_embd=8, block_size=8, n_layer=3),
                 marks=pytest.mark.slow(seconds=1)),
])
def test_model_switches(tmp_path, switches):
    vocab = Vocabulary.from_documents(NAMES, bos_first=switches.get('bos') == 'first')
    ckpt = checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size, **switches), vocab, NAMES)
    build(ckpt, tmp_path / 'c')
    check_against_python(ckpt, tmp_path / 'c')


@pytest.mark.slow(seconds=1)
def test_utf8_vocabulary(tmp_path):
    vocab = Vocabulary.from_documents(UTF8_NAMES)
    ckpt = checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, UTF8_NAMES, steps=60)
    build(ckpt, tmp_path / 'c')
    names = check_against_python(ckpt, tmp_path / 'c')
    assert any(ord(ch) > 127 for name in names for ch in name), names


def test_bad_arguments_of_the_c_program(tmp_path):
    vocab = Vocabulary.from_documents(NAMES)
    build(checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES, steps=1), tmp_path / 'c')
    for args in (['-1'], ['x'], ['3', '0'], ['3', 'hot'], ['3', '0.5', '-2'], ['3', '0.5', str(2**64)],
                 ['1', '2', '3', '4'], ['--logits'], ['--logits', str(vocab.size)], ['--logits'] + ['0'] * 17):
        proc = subprocess.run([str(tmp_path / 'c' / 'microgpt_names'), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and 'usage:' in proc.stderr and not proc.stdout, (args, proc)


def test_the_c_program_fails_when_standard_output_cannot_be_written(tmp_path):
    vocab = Vocabulary.from_documents(NAMES)
    build(checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES, steps=1), tmp_path / 'c')
    for args in (['3'], ['--logits', '0']):
        with open('/dev/full', 'w') as full:
            proc = subprocess.run([str(tmp_path / 'c' / 'microgpt_names'), *args], stdout=full, stderr=subprocess.PIPE,
                                  text=True)
        assert proc.returncode == 1 and proc.stderr == \
            'microgpt_names: error: could not write to standard output\n', (args, proc)


@pytest.mark.slow
def test_inference_takes_no_heap_under_newlib(tmp_path):
    """newlib's stdio took 1 KB of heap for stdout's buffer at the first character, beyond the budget."""
    vocab = Vocabulary.from_documents(NAMES)
    build(checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES, steps=1), tmp_path / 'c')
    heap, stdout = newlib_heap_bytes(tmp_path / 'c', 'microgpt_names.c', 5)
    assert heap == 0 and stdout == run_c(tmp_path / 'c', 5), heap


@pytest.mark.slow(seconds=1)
def test_gcc_in_its_gnu_mode_does_not_fuse_multiply_add(tmp_path):
    """GCC contracts a * b + c into one fused multiply-add unless in ISO mode (-std=c99): the program turns
    that off itself, so the Cortex-M4F's FPU gets no vfma in GCC's default mode either."""
    require_tool('arm-none-eabi-gcc')
    require_tool('arm-none-eabi-objdump')
    vocab = Vocabulary.from_documents(NAMES)
    export_c(checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES, steps=1), str(tmp_path))
    subprocess.run(['arm-none-eabi-gcc', '-std=gnu99', '-O2', '-mcpu=cortex-m4', '-mthumb', '-mfpu=fpv4-sp-d16',
                    '-mfloat-abi=hard', '-c', '-o', 'names.o', 'microgpt_names.c'], cwd=tmp_path, check=True)
    code = subprocess.run(['arm-none-eabi-objdump', '-d', 'names.o'], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout
    assert 'vmul.f32' in code and 'vfma' not in code and 'vfms' not in code


# ---- memory

DEFAULT_CFG = ModelConfig(vocab_size=27)


def test_memory_budget_of_the_default_model():
    rows = dict(memory_budget(DEFAULT_CFG))
    assert rows['flash: weights (float32)'] == 4 * 4192, rows
    assert (rows['inference RAM: KV cache'], rows['inference RAM: activations'], rows['inference RAM: total']) \
        == (2048, 684, 2804), rows


def test_inference_ram_is_the_c_programs_static_buffers(tmp_path):
    """The writable symbols of the compiled object are exactly the buffers memory_budget counts."""
    require_tool('nm')
    cfg = DEFAULT_CFG
    vocab = Vocabulary('abcdefghijklmnopqrstuvwxyz')
    engine = NumpyEngine(cfg, random.Random(0), 'float32')
    save_checkpoint(str(tmp_path / 'model.safetensors'), engine, vocab, TrainConfig(), 0, {})
    out_dir = tmp_path / 'c'
    export_c(load_checkpoint(str(tmp_path / 'model.safetensors')), str(out_dir))
    subprocess.run(['cc', '-std=c99', '-O2', '-Wall', '-Wextra', '-pedantic', '-Werror', '-c', '-o',
                    'microgpt_names.o', 'microgpt_names.c'], cwd=out_dir, check=True)
    listing = subprocess.run(['nm', '--size-sort', '-S', 'microgpt_names.o'], cwd=out_dir, check=True,
                             capture_output=True, text=True).stdout
    symbols = {}  # name -> (type, bytes)
    for line in listing.splitlines():
        _, size, kind, name = line.split()
        symbols[name] = (kind, int(size, 16))
    ram = {name: size for name, (kind, size) in symbols.items() if kind in 'bBdDsSgG'}  # bss, data, small data
    flash = {name: size for name, (kind, size) in symbols.items() if kind in 'rR'}
    rows = dict(memory_budget(cfg))

    kv, rng, out = ('kv_keys', 'kv_values'), ('rng_state',), ('stdout_buffer',)
    activations = tuple(name for name in ram if name.startswith('act_'))
    assert set(ram) == set(kv + rng + out + activations), ram
    assert sorted(activations) == ['act_att', 'act_h', 'act_logits', 'act_q', 'act_x', 'act_xn', 'act_y'], ram
    assert rows['inference RAM: KV cache'] == sum(ram[n] for n in kv), (rows, ram)
    assert rows['inference RAM: activations'] == sum(ram[n] for n in activations), (rows, ram)
    assert rows['inference RAM: PRNG state'] == ram['rng_state'], (rows, ram)
    assert rows['inference RAM: standard output buffer'] == ram['stdout_buffer'], (rows, ram)
    assert rows['inference RAM: total'] == sum(ram.values()) == 2804, (rows, ram)

    weight_symbols = {name.replace('.', '_') for name in engine.weights()}
    assert rows['flash: weights (float32)'] == sum(flash[n] for n in weight_symbols) == 4 * num_parameters(cfg), \
        (rows, flash)
    assert rows['flash: token table'] == flash['token_text'], (rows, flash)


# ---- what the export refuses

def test_export_refuses_what_the_c_program_cannot_do(tmp_path):
    vocab = Vocabulary.from_documents(NAMES)
    ckpt = checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES, steps=1)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(MicrogptError, match='not a directory'):
        export_c(ckpt, str(tmp_path / 'file'))
    ckpt.vocab = Vocabulary(vocab.chars, bos_first=True)
    with pytest.raises(MicrogptError, match='does not match'):
        export_c(ckpt, str(tmp_path / 'c'))
    ckpt.vocab = Vocabulary(vocab.chars[:-1] + '\0')
    with pytest.raises(MicrogptError, match='C string'):
        export_c(ckpt, str(tmp_path / 'c'))
    ckpt.vocab = vocab
    ckpt.weights['wte'] = ckpt.weights['wte'].astype(np.float64) * 1e40  # finite in float64, inf in float32
    with pytest.raises(MicrogptError, match='wte'):
        export_c(ckpt, str(tmp_path / 'c'))


def test_a_model_that_overflows_in_float32_is_refused_by_every_export(tmp_path):
    """Weights float32 holds (a diverged run's last finite checkpoint, about 1e20) can overflow in its arithmetic:
    RMSNorm's squares became infinite, every logit 0, and the C program, the page and the on-device trainer sampled
    uniform noise or printed loss -nan, exit 0. Every export compares the float32 logits with the float64 ones."""
    from microgpt.cli import main
    from microgpt.export.web import export_web
    vocab = Vocabulary.from_documents(NAMES)
    engine = NumpyEngine(ModelConfig(vocab_size=vocab.size), random.Random(0), 'float64')
    engine.flat[...] *= 1e20                                      # every weight finite in float32
    path = str(tmp_path / 'diverged.safetensors')
    save_checkpoint(path, engine, vocab, TrainConfig(), 1, {})
    words = "the model's logits in float32, the precision the C programs and the page compute in, are not its own"
    with pytest.raises(MicrogptError, match=words):
        export_c(load_checkpoint(path), str(tmp_path / 'c'))
    with pytest.raises(MicrogptError, match=words):
        export_web(path, str(tmp_path / 'web'))
    (tmp_path / 'names.txt').write_text('\n'.join(NAMES) + '\n')
    err = io.StringIO()
    code = main(['export', '--train', '--checkpoint', path, '--data', str(tmp_path / 'names.txt'), '--out',
                 str(tmp_path / 'train')], out=io.StringIO(), err=err)
    assert code == 2 and words in err.getvalue(), (code, err.getvalue())
    assert not any((tmp_path / name).exists() for name in ('c', 'web', 'train'))
    engine.flat[...] /= 1e20                                      # the model itself exports
    save_checkpoint(path, engine, vocab, TrainConfig(), 1, {})
    export_c(load_checkpoint(path), str(tmp_path / 'c'))


def test_the_build_line_of_a_folder_named_like_a_flag_builds(tmp_path, monkeypatch):
    """`export --out=-cdir` printed `build: cd -cdir && ...`, which cd reads as its options (-c ...): it failed."""
    from microgpt.cli import main
    vocab = Vocabulary.from_documents(NAMES)
    checkpoint_of(tmp_path, ModelConfig(vocab_size=vocab.size), vocab, NAMES, steps=1)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    assert main(['export', '--checkpoint', 'model.safetensors', '--out=-cdir'], out=out, err=io.StringIO()) == 0
    build = next(line for line in out.getvalue().splitlines() if line.startswith('build: '))
    assert build.startswith('build: cd ./-cdir && '), build
    proc = subprocess.run(['sh', '-c', build.removeprefix('build: ')], capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / '-cdir' / 'microgpt_names').is_file(), (build, proc.stderr)
