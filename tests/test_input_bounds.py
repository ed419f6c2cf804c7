"""Input bounds: every input that could run away (an endless stream, a huge block, a malformed argument of the
exported C program) is refused with one line, before it costs memory or time."""

import os
import random
import shutil
import subprocess
import threading
from itertools import islice

import pytest

from conftest import in_ci
from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import Vocabulary
from microgpt.engines.numpy.engine import NumpyEngine
from microgpt.export.c import export_c
from microgpt.train.checkpoint import load_checkpoint, save_checkpoint
from microgpt.train.loop import train

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail']


# ---- the exported C program parses its arguments strictly

@pytest.fixture(scope='module')
def c_program(tmp_path_factory):
    if shutil.which('cc') is None:
        if in_ci():
            pytest.fail("no `cc` on PATH; CI must have a C toolchain")
        pytest.skip("no `cc` on PATH: the C export cannot be built here")
    folder = tmp_path_factory.mktemp('c')
    vocab = Vocabulary.from_documents(NAMES)
    engine = NumpyEngine(ModelConfig(vocab_size=vocab.size), random.Random(0), 'float32')
    tcfg = TrainConfig(steps=2)
    for _ in islice(train(engine, [vocab.document_tokens(d) for d in NAMES], tcfg), 2):
        pass
    save_checkpoint(str(folder / 'model.safetensors'), engine, vocab, tcfg, 2, {})
    info = export_c(load_checkpoint(str(folder / 'model.safetensors')), str(folder))
    proc = subprocess.run(info.build_command.split() + ['-Werror'], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return str(folder / 'microgpt_names')


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


def test_c_program_accepts_the_extremes(c_program):
    for args, lines in ((['0'], 0), (['2', '0.5', '0'], 2), (['2', '1e-3', str(2**64 - 1)], 2),
                        (['1', '.5', '007'], 1)):
        proc = run_program(c_program, *args)
        assert proc.returncode == 0 and proc.stdout.count('\n') == lines, (args, proc.returncode, proc.stderr)
    same = run_program(c_program, '5', '0.5', '7').stdout
    assert run_program(c_program, '5', '0.5', '007').stdout == same, 'leading zeros change the seed'
