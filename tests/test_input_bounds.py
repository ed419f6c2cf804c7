"""Input bounds: every input that could run away (an endless stream, a huge block, a malformed argument of the
exported C program) is refused with one line, before it costs memory or time."""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from itertools import islice

import pytest

from helpers import in_ci, pack_columns, run_cli_in_process
from microgpt import data
from microgpt.config import ModelConfig, TrainConfig
from microgpt.corpus import load_corpus
from microgpt.data import Vocabulary, load_documents
from microgpt.errors import MicrogptError
from microgpt.memory import available_bytes, check_memory, estimate_bytes
from microgpt.engines.numpy.engine import NumpyEngine
from microgpt.export.c import export_c
from microgpt.train.checkpoint import load_checkpoint, save_checkpoint
from microgpt.train.loop import train

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail']


# ---- the exported C program parses its arguments strictly

def built_c_program(folder, names):
    """The C program of a model of `names`' characters, trained 2 steps, built in `folder`."""
    if shutil.which('cc') is None:
        if in_ci():
            pytest.fail("no `cc` on PATH; CI must have a C toolchain")
        pytest.skip("no `cc` on PATH: the C export cannot be built here")
    vocab = Vocabulary.from_documents(names)
    engine = NumpyEngine(ModelConfig(vocab_size=vocab.size), random.Random(0), 'float32')
    tcfg = TrainConfig(steps=2)
    for _ in islice(train(engine, [vocab.document_tokens(d) for d in names], tcfg), 2):
        pass
    save_checkpoint(str(folder / 'model.safetensors'), engine, vocab, tcfg, 2, {})
    info = export_c(load_checkpoint(str(folder / 'model.safetensors')), str(folder))
    proc = subprocess.run(info.build_command.split() + ['-Werror'], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return str(folder / 'microgpt_names')


@pytest.fixture(scope='module')
def c_program(tmp_path_factory):
    return built_c_program(tmp_path_factory.mktemp('c'), NAMES)


def run_program(program, *args):
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('args', [
    ['3', '0.5', ' 1'], ['3', '0.5', ' -1'], ['3', '0.5', '-1'], ['3', '0.5', '+1'], ['3', '0.5', '1 '],
    ['3', '0.5', '0x10'], ['3', '0.5', ''], ['3', '0.5', str(2**64)], ['3', '0.5', '99999999999999999999999'],
    [' 3'], ['+3'], ['3 '], ['-0'], ['1000000001'], ['3.0'], [''],
    ['3', ' 0.5'], ['3', 'inf'], ['3', 'nan'], ['3', '1e999'], ['3', '-0.5'], ['3', '0'], ['3', '0.5x'],
    ['--logits', ' 1'], ['--logits', '+1'], ['--logits', '-0'], ['--logits', '1', ''],
], ids=repr)
def test_c_program_refuses_malformed_arguments(c_program, args):
    proc = run_program(c_program, *args)
    assert proc.returncode == 2, (args, proc.returncode, proc.stdout[:200])
    assert 'usage:' in proc.stderr and not proc.stdout, (args, proc.stderr, proc.stdout[:200])


def test_c_program_of_a_vocabulary_under_ten_refuses_every_id_past_it(tmp_path):
    """--logits ID takes ids below the vocabulary's size: with a vocabulary of fewer than 10 tokens, a digit above the
    last id passed the check (its bound, less the digit, wrapped around), and the program read past its weights."""
    program = built_c_program(tmp_path, ['abc', 'cab', 'bac'])  # a, b, c and BOS: ids 0 to 3
    assert run_program(program, '--logits', '3').returncode == 0
    for token in map(str, range(4, 12)):
        proc = run_program(program, '--logits', token)
        assert proc.returncode == 2 and 'usage:' in proc.stderr and not proc.stdout, (token, proc.stdout[:200])


def test_c_program_accepts_the_extremes(c_program):
    for args, lines in ((['0'], 0), (['2', '0.5', '0'], 2), (['2', '1e-3', str(2**64 - 1)], 2),
                        (['1', '.5', '007'], 1)):
        proc = run_program(c_program, *args)
        assert proc.returncode == 0 and proc.stdout.count('\n') == lines, (args, proc.returncode, proc.stderr)
    same = run_program(c_program, '5', '0.5', '7').stdout
    assert run_program(c_program, '5', '0.5', '007').stdout == same, 'leading zeros change the seed'


# ---- runaway and non-text data files

@pytest.mark.parametrize('load', [load_documents, load_corpus], ids=['strings', 'tokens'])
def test_an_endless_stream_of_nul_bytes_is_refused_at_once(load):
    started = time.perf_counter()
    with pytest.raises(MicrogptError) as info:
        load('/dev/zero')
    seconds = time.perf_counter() - started
    assert 'not a text file' in str(info.value) and 'offset 0' in str(info.value), str(info.value)
    assert seconds < 5, f"{seconds:.1f} s to refuse /dev/zero"


@pytest.mark.parametrize('raw, fragment', [
    (b'anna\nbob\x00\n', 'offset 8'), (b'anna\n\xff\xfe\n', 'offset 5'), (bytes(range(256)) * 4, 'not a text file'),
    (b'\x89PNG\r\n\x1a\n' + bytes(100), 'not a text file'), (b'ok\n' * 10 + 'é'.encode('utf-8')[:1], 'offset 30'),
])
@pytest.mark.parametrize('load', [load_documents, load_corpus], ids=['strings', 'tokens'])
def test_a_file_that_is_not_text_is_one_line(tmp_path, raw, fragment, load):
    path = tmp_path / 'data.bin'
    path.write_bytes(raw)
    with pytest.raises(MicrogptError) as info:
        load(str(path))
    message = str(info.value)
    assert fragment in message and str(path) in message and '\n' not in message, message


def endless_writer(fifo, stop):
    """Write 'abc\\n' into the named pipe until the reader closes it."""
    try:
        with open(fifo, 'wb') as f:
            while not stop.is_set():
                f.write(b'abc\n' * 4096)
    except BrokenPipeError:
        pass


def error_of_an_endless_fifo(tmp_path, load):
    """The MicrogptError that `load` raises on a FIFO an endless writer feeds, as a string."""
    fifo = str(tmp_path / 'fifo')
    os.mkfifo(fifo)
    stop = threading.Event()
    writer = threading.Thread(target=endless_writer, args=(fifo, stop), daemon=True)
    writer.start()
    try:
        with pytest.raises(MicrogptError) as info:
            load(fifo)
    finally:
        stop.set()
    return str(info.value)


@pytest.mark.parametrize('load', [load_documents, load_corpus], ids=['strings', 'tokens'])
def test_an_endless_text_stream_is_bounded(tmp_path, monkeypatch, load):
    monkeypatch.setattr(data, 'MAX_STREAM_BYTES', 2**20)
    message = error_of_an_endless_fifo(tmp_path, load)
    assert 'a stream of more than 1,048,576 bytes' in message and 'into a file' in message, message


@pytest.mark.parametrize('load', [load_documents, load_corpus], ids=['strings', 'tokens'])
def test_an_endless_text_stream_is_bounded_by_the_memory(tmp_path, monkeypatch, load):
    """A stream is tokenised in memory, 8.4 bytes per byte of 3-letter lines: with 16 MiB available, 1 MiB is
    read (`yes abc | microgpt train --data /dev/stdin` read 1 GiB into 8.5 GB on a 21 GB machine)."""
    from microgpt import memory
    monkeypatch.setattr(memory, 'available_bytes', lambda: 2**24)
    message = error_of_an_endless_fifo(tmp_path, load)
    assert 'a stream of more than 1,048,576 bytes' in message, message


def test_a_bounded_stream_loads_like_the_file(tmp_path):
    fifo = str(tmp_path / 'fifo')
    os.mkfifo(fifo)
    text = b'anna\r\nbob\n\n  cy  \n'
    writer = threading.Thread(target=lambda: open(fifo, 'wb').write(text), daemon=True)
    writer.start()
    assert load_documents(fifo) == ['anna', 'bob', 'cy']


@pytest.mark.parametrize('end', [b'', b'\n', b'\r\n', b'\nbob\n'])
@pytest.mark.parametrize('length', [1001, 1200, 5000])
def test_an_endless_line_is_bounded(tmp_path, monkeypatch, end, length):
    """With or without a line break after it: a line that ended within the next read escaped the check (a
    72 MiB line with its newline was read, the same without one refused)."""
    from microgpt.corpus import load_corpus
    monkeypatch.setattr(data, 'MAX_LINE_BYTES', 1000)
    monkeypatch.setattr(data, 'READ_BYTES', 256)
    path = tmp_path / 'one-line.txt'
    path.write_bytes(b'ok\n' + b'a' * length + end)
    for read in (load_documents, load_corpus):
        with pytest.raises(MicrogptError, match='a line of more than 1,000 bytes at offset 3'):
            read(str(path))
    path.write_bytes(b'ok\n' + b'a' * 1000 + end)  # the longest line allowed
    assert load_documents(str(path))[1] == 'a' * 1000


def test_a_file_that_grows_while_read_is_read_up_to_its_size_at_opening(tmp_path, monkeypatch):
    path = tmp_path / 'growing.txt'
    path.write_bytes(b'anna\nbob\n')
    real_read_pieces = data.read_pieces

    def grow_then_read(p):
        pieces = real_read_pieces(p)
        first = next(pieces)
        with open(path, 'ab') as f:
            f.write(b'late\n' * 1000)
        yield first
        yield from pieces
    monkeypatch.setattr(data, 'READ_BYTES', 4)
    monkeypatch.setattr(data, 'read_pieces', grow_then_read)
    assert load_documents(str(path)) == ['anna', 'bob'], load_documents(str(path))


CTRL_C_WHILE_READING = '''
import sys
from microgpt.{module} import {function}
print('reading', flush=True)
{function}('/dev/stdin')
'''


@pytest.mark.slow(seconds=1)  # a fresh interpreter each, and a second's wait
@pytest.mark.parametrize('module, function', [('data', 'load_documents'), ('corpus', 'load_corpus')])
def test_ctrl_c_while_reading_an_endless_stream(module, function):
    """A slow endless pipe: Ctrl-C stops the read within a second (pieces are read in Python)."""
    proc = subprocess.Popen([sys.executable, '-c', CTRL_C_WHILE_READING.format(module=module, function=function)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b'reading\n'
    stop = threading.Event()

    def feed():
        try:
            while not stop.is_set():
                proc.stdin.write(b'abc\n' * 1000)
                proc.stdin.flush()
                time.sleep(0.01)
        except (BrokenPipeError, ValueError):
            pass
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        stop.set()
        proc.kill()
    assert proc.returncode != 0 and b'KeyboardInterrupt' in err, (proc.returncode, err[-500:])


# ---- a model too large for the machine is one line before any allocation; memory follows the data

def test_memory_follows_the_data_not_the_block():
    """Growing the block past the longest document grows only what is sized by the block: wpe (a parameter,
    8 copies with gradients, Adam's moments and scratch) and the sampling KV cache (L, 2, block, C)."""
    small, huge = ModelConfig(vocab_size=27, block_size=16), ModelConfig(vocab_size=27, block_size=100000)
    grown = estimate_bytes(huge, 32, 15) - estimate_bytes(small, 32, 15)
    want = 8 * (8 * 16 + 2 * 1 * 16) * (100000 - 16)
    assert grown == want, (grown, want)
    check_memory(huge, 32, 15, available=2**30)  # 100,000 positions of names fit in 1 GiB: the data is short


def test_a_long_document_counts_up_to_the_block():
    cfg = ModelConfig(vocab_size=27, block_size=64)
    assert estimate_bytes(cfg, 1, 1000) == estimate_bytes(cfg, 1, 63) > estimate_bytes(cfg, 1, 62), \
        (estimate_bytes(cfg, 1, 1000), estimate_bytes(cfg, 1, 63), estimate_bytes(cfg, 1, 62))


@pytest.mark.parametrize('cfg, batch, longest, dtype', [
    (ModelConfig(vocab_size=27, n_embd=4096, n_head=4, n_layer=64, block_size=100000), 1, 15, 'float64'),
    (ModelConfig(vocab_size=27, block_size=100000), 64, 100000, 'float32'),
    (ModelConfig(vocab_size=60000, n_embd=2048, block_size=64), 512, 63, 'float64'),
], ids=['wide-deep', 'long-documents', 'large-vocabulary-batch'])
def test_a_model_too_large_for_the_machine_is_one_line(cfg, batch, longest, dtype):
    need = estimate_bytes(cfg, batch, longest, dtype)
    with pytest.raises(MicrogptError) as info:
        check_memory(cfg, batch, longest, dtype, available=need)  # 80% of it is usable: too little
    message = str(info.value)
    assert '\n' not in message and 'GiB' in message and '--block-size' in message, message
    check_memory(cfg, batch, longest, dtype, available=2 * need)


def test_available_memory_is_read():
    have = available_bytes()
    assert 2**26 < have <= os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'), have


@pytest.mark.parametrize('load', [load_documents, load_corpus], ids=['strings', 'tokens'])
def test_an_unreadable_file_is_one_line(tmp_path, load):
    path = tmp_path / 'secret.txt'
    path.write_text('anna\n')
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: a path through a file stands for an unreadable one
        path = tmp_path / 'secret.txt' / 'x'
    with pytest.raises(MicrogptError) as info:
        load(str(path))
    assert str(path) in str(info.value) and '\n' not in str(info.value), str(info.value)


@pytest.mark.parametrize('dropout', [0.0, 0.1])
@pytest.mark.parametrize('attention', ['causal', 'self'])
def test_a_numpy_step_allocates_for_the_batch_not_the_block(attention, dropout):
    """The numpy engine's attention mask and dropout indices follow the batch's positions: a block of 4,000
    over names of at most 9 characters (a (4000, 4000) float64 mask is 128 MB) takes what a block of 16 takes,
    but for the larger wpe. Traced from the first step, where the caches fill; each case has its own block, so
    no case reads what another cached."""
    import tracemalloc
    big = 4000 + 2 * (attention == 'self') + (dropout > 0)
    vocab = Vocabulary.from_documents(NAMES)
    batch = [vocab.document_tokens(d) for d in NAMES[:4]]
    tcfg = TrainConfig(batch_size=4, dropout=dropout)
    peaks = {}
    for block in (16, big):
        engine = NumpyEngine(ModelConfig(vocab_size=27, block_size=block, attention=attention), random.Random(1))
        tracemalloc.start()
        for _ in range(3):
            engine.train_step(batch, 0.01, tcfg)
        peaks[block] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    wpe_grown = 8 * 16 * (big - 16) * 8  # wpe's rows, 8 copies (weights, gradients, Adam, scratch)
    assert peaks[big] < peaks[16] + wpe_grown, (peaks, wpe_grown)


@pytest.mark.slow(seconds=2)  # torch's dispatch mode: 2.5 s for the first case in a process
@pytest.mark.parametrize('attention, dropout', [('causal', 0.1), ('self', 0.0), ('causal', 0.0), ('self', 0.1)])
def test_a_torch_step_allocates_for_the_batch_not_the_block(require_torch, attention, dropout):
    """The torch engine's attention mask and dropout masks follow the batch's positions: --block-size 150000 built
    a (150000, 150000) mask (22.5 GB) at start. tracemalloc does not see torch's allocations, so every tensor an
    operation makes (construction, 2 steps, a sampled position) is recorded: none is larger than the parameters,
    whose wpe is the one thing the block sizes."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from microgpt.engines.torch.engine import TorchEngine

    class LargestTensor(TorchDispatchMode):
        largest = (0, None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, (tuple, list)) else (result,):
                if hasattr(t, 'numel') and t.numel() > self.largest[0]:
                    self.largest = (t.numel(), str(func))
            return result

    vocab = Vocabulary.from_documents(NAMES)
    batch = [vocab.document_tokens(d) for d in NAMES[:4]]
    cfg = ModelConfig(vocab_size=27, block_size=4000, attention=attention)
    with LargestTensor() as record:
        engine = TorchEngine(cfg, random.Random(1), device='cpu')
        for _ in range(2):
            engine.train_step(batch, 0.01, TrainConfig(batch_size=4, dropout=dropout))
        engine.decoder().step(vocab.bos_id, 0)
    assert record.largest[0] <= engine.num_params(), (record.largest, engine.num_params())


def test_the_parameter_count_of_a_million_layers_is_counted_at_once():
    """num_parameters is arithmetic, not a table of 6 million rows: --n-layer 1000000 is refused at once."""
    from microgpt.config import num_parameters, parameter_table
    for cfg in (ModelConfig(vocab_size=27), ModelConfig(vocab_size=5, n_layer=3, tie_lm_head=True, block_size=7)):
        assert num_parameters(cfg) == sum(p.size for p in parameter_table(cfg)), cfg
    start = time.process_time()
    count = num_parameters(ModelConfig(vocab_size=27, n_layer=10**6))
    spent = time.process_time() - start
    assert count == (27 + 16 + 27) * 16 + 10**6 * 12 * 16 * 16 and spent < 0.01, (count, spent)


def test_the_reference_engine_counts_its_python_objects():
    """The reference engine keeps a Python object per number: 2,000 layers (6 million parameters, a graph of
    tens of GiB) are refused in one line naming the numpy engine."""
    cfg = ModelConfig(vocab_size=27, n_layer=2000)
    assert estimate_bytes(cfg, 1, 15, engine='reference') > 50 * estimate_bytes(cfg, 1, 15), \
        (estimate_bytes(cfg, 1, 15, engine='reference'), estimate_bytes(cfg, 1, 15))
    with pytest.raises(MicrogptError, match='--engine numpy'):
        check_memory(cfg, 1, 15, engine='reference', available=16 * 2**30)
    check_memory(ModelConfig(vocab_size=27), 1, 15, engine='reference', available=2**30)


def test_a_failed_allocation_is_one_line(monkeypatch):
    """Whatever the command, a MemoryError is one line and exit 2 (the quick loop's test of it; the slow one below
    runs out of memory for real)."""
    import microgpt.commands

    def out_of_memory(*args, **kwargs):
        raise MemoryError('Unable to allocate 4.77 GiB for an array with shape (640000000,) and data type float64')
    monkeypatch.setattr(microgpt.commands, 'TrainingRun', out_of_memory)
    code, out, err = run_cli_in_process('train', '--steps', '1')
    assert code == 2 and out == '', (code, out)
    assert err == ('microgpt: error: out of memory (Unable to allocate 4.77 GiB for an array with shape (640000000,) '
                   'and data type float64); give a smaller model, --batch-size or --block-size, or raise the '
                   'process\'s memory limit\n'), err


@pytest.mark.slow(seconds=2)  # a fresh interpreter under a memory limit
def test_running_out_of_memory_under_a_process_limit_is_one_line(tmp_path):
    """The memory check reads the machine's free memory; under a ulimit (or a container's limit) the allocation
    itself fails: one line and exit 2, not numpy's traceback."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # 3 GiB of address space
    proc = subprocess.run([sys.executable, '-m', 'microgpt', 'train', '--block-size', '10000000', '--steps', '1'],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit, cwd=tmp_path)  # wpe: 5 GiB
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith('microgpt: error: out of memory (') and proc.stderr.count('\n') == 1, proc.stderr


def test_every_dtype_has_a_memory_estimate():
    """--engine torch --dtype bfloat16 was a KeyError traceback in the memory check; autocast keeps float32
    weights and Adam state, so it counts as float32."""
    from microgpt.engines import DTYPES
    cfg = ModelConfig(vocab_size=27)
    for dtype in DTYPES:
        assert estimate_bytes(cfg, 1, 15, dtype) > 0, dtype
    assert estimate_bytes(cfg, 1, 15, 'bfloat16') == estimate_bytes(cfg, 1, 15, 'float32')


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_a_fused_step_allocates_for_the_batch_not_the_block(dropout):
    """The fused engine's workspace follows the documents (their longest, by 8 positions), never the block:
    --engine fused --block-size 100000 on names was refused (373 GiB, a column per position of the block). Its
    steps now take what a block of 16 takes, but for the larger wpe, and equal the numpy engine's: at a block of
    4,000 (half a GB the old way; a block of 100,000 is estimated, below, not built: its wpe takes seconds to
    draw)."""
    import tracemalloc
    from microgpt.engines.fused.engine import FusedEngine
    vocab = Vocabulary.from_documents(NAMES)
    batch = [vocab.document_tokens(d) for d in NAMES[:4]]
    tcfg = TrainConfig(batch_size=4, dropout=dropout)
    big = 4000
    peaks = {}
    for block in (16, big):
        cfg = ModelConfig(vocab_size=27, block_size=block)
        fused, reference = FusedEngine(cfg, random.Random(1)), NumpyEngine(cfg, random.Random(1))
        fused.train_step(batch, 0.01, tcfg)  # compiled (or loaded) outside the trace
        tracemalloc.start()
        losses = [fused.train_step(batch, 0.01, tcfg) for _ in range(2)]
        peaks[block] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        want = [reference.train_step(batch, 0.01, tcfg) for _ in range(3)][1:]
        assert losses == pytest.approx(want, rel=1e-12), (block, losses, want)
    wpe_grown = 8 * 16 * (big - 16) * 8
    assert peaks[big] < peaks[16] + wpe_grown, (peaks, wpe_grown)
    cfg = ModelConfig(vocab_size=27, block_size=100000)
    assert estimate_bytes(cfg, 1, 15, engine='fused') == estimate_bytes(cfg, 1, 15, engine='numpy')
    check_memory(cfg, 1, 15, engine='fused', available=2**30)


@pytest.mark.slow(seconds=2)  # compiles pack_columns on its own
def test_a_document_longer_than_the_workspace_is_refused_before_any_write():
    """pack_columns writes a document's positions unchecked by the compiled kernels: a plan whose span is
    shorter than a document (the engine sizes it first, so only a direct caller can do this) is a ValueError,
    not a write past the workspace."""
    from microgpt.engines.fused import plan as fused_plan
    cfg = ModelConfig(vocab_size=6, block_size=16)
    plan, _ = fused_plan.build_plan(cfg, capacity=8, span=4)
    docs, doc_starts = fused_plan.pack_documents([[5, 1, 2, 3, 4, 1, 5]], cfg.block_size + 1)
    with pytest.raises(ValueError, match='more positions than the workspace'):
        pack_columns(plan, docs, doc_starts, 0, 0, 1)
