"""Writes that fail: --out naming a file, a read-only folder, a disk that is full from the start or fills in
the middle of a run, `study --out` naming a file. Each is one line naming the path and the reason, exit 2,
and the checkpoints written before stay loadable. The full disk is a small tmpfs when the test runs as root
(as in CI); a fault-injecting file object stands in for it everywhere."""

import errno
import io
import json
import os
import random
import subprocess
from itertools import islice

import pytest

from helpers import in_ci, run_cli_in_process
from microgpt.cli import main
from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import Vocabulary
from microgpt.engines import make_engine
from microgpt.errors import MicrogptError
from microgpt.train import checkpoint
from microgpt.train.checkpoint import load_checkpoint, save_checkpoint
from microgpt.train.loop import train

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail']
VOCAB = Vocabulary.from_documents(NAMES)
TCFG = TrainConfig(steps=3)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / 'names.txt'
    path.write_text('\n'.join(NAMES) + '\n')
    return str(path)


def mount(folder, options):
    """Mount a tmpfs on `folder` (root only); skipped elsewhere, failed in CI, which runs as root."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI runs the disk-fault tests as root, to mount a small tmpfs")
        pytest.skip("mounting a tmpfs needs root; the fault-injecting tests cover the save path")
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(folder)], capture_output=True, text=True)
    if proc.returncode:
        if in_ci():
            pytest.fail(f"mount -t tmpfs failed in CI: {proc.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr}")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: two checkpoints of the default model (100 KB each) fit, a third file does not."""
    folder = mount(tmp_path / 'disk', 'size=256k')
    yield folder
    subprocess.run(['umount', str(folder)], check=True)


@pytest.fixture
def read_only_disk(tmp_path):
    folder = mount(tmp_path / 'ro', 'size=64k,ro')
    yield folder
    subprocess.run(['umount', str(folder)], check=True)


def trained_engine():
    engine = make_engine('numpy', ModelConfig(vocab_size=VOCAB.size), random.Random(0), 'float64')
    for _ in islice(train(engine, [VOCAB.document_tokens(d) for d in NAMES], TCFG), 1):
        pass
    return engine


def assert_one_line_error(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith('microgpt: error: '), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert 'Traceback' not in err, err


def test_out_naming_an_existing_file(tmp_path, data_file):
    target = tmp_path / 'not-a-folder'
    target.write_text('keep me')
    code, out, err = run_cli_in_process('train', '--data', data_file, '--steps', 2, '--out', target)
    assert_one_line_error(code, err, f"cannot make the output folder ({target} is a file, not a folder)")
    assert target.read_text() == 'keep me'


def test_an_export_below_a_file_or_into_a_dead_link_names_it(tmp_path, data_file):
    """os.makedirs says only 'File exists': the three exports said that, where train names what is in the way."""
    code, _, err = run_cli_in_process('train', '--data', data_file, '--steps', 2, '--out', tmp_path / 'run',
                                      '--num-samples', 0)
    assert code == 0, err
    (tmp_path / 'afile').write_text('keep me')
    os.symlink(tmp_path / 'nowhere', tmp_path / 'dead')
    for flags in ([], ['--web'], ['--train']):
        for out, why in ((tmp_path / 'afile' / 'sub', f"{tmp_path / 'afile'} is a file, not a folder"),
                         (tmp_path / 'dead', f"{tmp_path / 'dead'} is a link to nothing")):
            code, _, err = run_cli_in_process('export', '--checkpoint', tmp_path / 'run' / 'model.safetensors',
                                              '--out', out, *flags)
            assert_one_line_error(code, err, why)
    assert (tmp_path / 'afile').read_text() == 'keep me' and not (tmp_path / 'nowhere').exists()


def test_study_out_naming_an_existing_file(tmp_path, data_file):
    target = tmp_path / 'results'
    target.write_text('keep me')
    code, out, err = run_cli_in_process('study', '--data', data_file, '--experiments', 'baseline', '--out', target)
    assert_one_line_error(code, err, str(target))
    assert target.read_text() == 'keep me'


def test_out_in_a_read_only_folder(read_only_disk, data_file):
    """An empty read-only folder was 'model.safetensors: cannot remove the previous run's file': on a read-only file
    system, removing a file that is not there fails as read-only, not as missing."""
    for out in (read_only_disk, read_only_disk / 'run'):
        code, _, err = run_cli_in_process('train', '--data', data_file, '--steps', 2, '--out', out)
        assert_one_line_error(code, err, str(read_only_disk), 'Read-only file system')
        assert 'previous run' not in err, err


def test_saving_onto_a_full_disk_keeps_the_previous_checkpoint(small_disk):
    engine = trained_engine()
    path = small_disk / 'model.safetensors'
    save_checkpoint(str(path), engine, VOCAB, TCFG, 1, {})
    before = path.read_bytes()
    (small_disk / 'filler').write_bytes(b'x' * (256 * 1024 - 2 * len(before)))  # less room than one more file
    with pytest.raises(MicrogptError) as info:
        save_checkpoint(str(path), engine, VOCAB, TCFG, 2, {})
    message = str(info.value)
    assert str(path) in message and 'No space left on device' in message and '\n' not in message, message
    assert path.read_bytes() == before and load_checkpoint(str(path)).step == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ['filler', 'model.safetensors']


def test_the_disk_filling_in_the_middle_of_a_run(small_disk, data_file):
    """The first save (resume and model, about 200 KB) fits; the second needs room for a temporary and fails."""
    code, out, err = run_cli_in_process('train', '--data', data_file, '--steps', 5, '--save-every', 1,
                                        '--out', small_disk)
    assert_one_line_error(code, err, str(small_disk), 'No space left on device')
    assert 'step    1 /    5' in out and 'step    5' not in out, out
    for name in ('model.safetensors', 'resume.safetensors'):
        ckpt = load_checkpoint(str(small_disk / name))
        assert ckpt.step == 1, (name, ckpt.step)
    assert not list(small_disk.glob('.tmp-*')), sorted(p.name for p in small_disk.iterdir())


class _FullDisk:
    """A file object that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.mark.parametrize('room', [0, 1000, 50000])
def test_a_write_that_fails_as_a_full_disk(tmp_path, monkeypatch, room):
    engine = trained_engine()
    path = tmp_path / 'model.safetensors'
    save_checkpoint(str(path), engine, VOCAB, TCFG, 1, {})
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, 'fdopen', lambda fd, mode: _FullDisk(real_fdopen(fd, mode), room))
    with pytest.raises(MicrogptError) as info:
        save_checkpoint(str(path), engine, VOCAB, TCFG, 2, {})
    message = str(info.value)
    assert str(path) in message and 'No space left on device' in message and '\n' not in message, message
    assert 'its previous version is kept' in message, message
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(str(path)).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ['model.safetensors'], sorted(p.name for p in tmp_path.iterdir())


class _FillingFile:
    """An unbuffered file that takes `room` more bytes, part of a write if need be (as a disk filling up does),
    and then fails with ENOSPC."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if not self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = self.f.write(data[:self.room])
        self.room -= taken
        return taken

    def __getattr__(self, name):
        return getattr(self.f, name)


def metrics_filling_after(monkeypatch, room):
    """metrics.jsonl takes `room` bytes, then fails as a full disk."""
    from microgpt.train import run as run_module

    def opened(path, mode, **kwargs):
        f = open(path, mode, **kwargs)
        return _FillingFile(f, room) if path.endswith('metrics.jsonl') else f

    monkeypatch.setattr(run_module, 'open', opened, raising=False)


@pytest.mark.parametrize('save_every, kept', [(0, 'this run saved no checkpoint in'), (2, 'resume.safetensors keeps step')])
def test_metrics_on_a_full_disk_end_at_a_whole_line_and_say_what_is_kept(tmp_path, data_file, monkeypatch,
                                                                         save_every, kept):
    """The message said 'the checkpoints in DIR are kept' where DIR held none, and the last line was cut."""
    metrics_filling_after(monkeypatch, 430)  # some records and part of one
    out = tmp_path / 'run'
    extra = ['--save-every', save_every] if save_every else []
    code, _, err = run_cli_in_process('train', '--data', data_file, '--steps', 20, '--out', out, *extra)
    assert_one_line_error(code, err, str(out / 'metrics.jsonl'), 'No space left on device', kept)
    text = (out / 'metrics.jsonl').read_text()
    steps = [json.loads(line)['step'] for line in text.splitlines()]
    assert text.endswith('\n') and steps == list(range(1, len(steps) + 1)), text
    assert len(text) < 430, text  # the part of the last record is gone


def test_a_plot_that_cannot_be_written_names_it_and_what_is_kept(tmp_path, data_file, monkeypatch):
    """It was `microgpt: error: No space left on device`, naming no path; after another error, that one is
    reported."""
    from microgpt.train import plotting

    def full(metrics_path, png_path):
        with open(png_path, 'wb') as f:
            f.write(b'\x89PNG')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plotting, 'plot_metrics', full)
    out = tmp_path / 'run'
    code, _, err = run_cli_in_process('train', '--data', data_file, '--steps', 4, '--out', out, '--plot')
    assert_one_line_error(code, err, str(out / 'loss.png'), 'No space left on device', 'keeps step 4')
    assert not (out / 'loss.png').exists()
    metrics_filling_after(monkeypatch, 0)
    code, _, err = run_cli_in_process('train', '--data', data_file, '--steps', 4, '--out', out, '--plot',
                                      '--overwrite')
    assert_one_line_error(code, err, str(out / 'metrics.jsonl'), 'saved no checkpoint')


def test_a_plot_on_a_really_full_disk(small_disk, data_file):
    (small_disk / 'filler').write_bytes(b'x' * (252 * 1024))
    code, _, err = run_cli_in_process('train', '--data', data_file, '--steps', 200, '--out', small_disk / 'run',
                                      '--plot')
    assert_one_line_error(code, err, str(small_disk / 'run' / 'metrics.jsonl'), 'No space left on device',
                          'saved no checkpoint')
    assert (small_disk / 'run' / 'metrics.jsonl').read_text().endswith('\n')


@pytest.mark.parametrize('room', [0, 1000])
@pytest.mark.parametrize('kind', ['c', 'train', 'web'])
def test_an_export_that_fails_as_a_full_disk_keeps_the_files_before(tmp_path, data_file, monkeypatch, kind, room):
    """export wrote weights.h, train_data.h and index.html in place: a full disk left them truncated. Now each
    file is written whole or not at all: the export before stays, no temporary is left, one line names the file."""
    from microgpt.export.c import export_c
    from microgpt.export.c_train import export_training_program
    from microgpt.export.web import export_web
    ckpt_path = tmp_path / 'model.safetensors'
    save_checkpoint(str(ckpt_path), trained_engine(), VOCAB, TCFG, 1, {})
    out = tmp_path / 'out'
    export = {'c': lambda: export_c(load_checkpoint(str(ckpt_path)), str(out)),
              'train': lambda: export_training_program(str(out), str(ckpt_path), data_file, False, None, None),
              'web': lambda: export_web(str(ckpt_path), str(out), force=True)}[kind]
    export()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, mode, **kw: _FullDisk(real_fdopen(fd, mode, **kw), room))
    with pytest.raises(MicrogptError) as info:
        export()
    monkeypatch.undo()
    message = str(info.value)
    assert str(out / ('index.html' if kind == 'web' else 'train_data.h' if kind == 'train' else 'weights.h')) \
        in message and 'No space left on device' in message and '\n' not in message, message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize('fault', ['full disk', 'folder in the way'])
@pytest.mark.parametrize('kind', ['c', 'train'])
def test_a_c_export_that_fails_on_its_second_file_keeps_the_export_before(tmp_path, data_file, monkeypatch, kind,
                                                                         fault):
    """A C export writes three files, each whole or not at all: one that failed on the second (a full disk, a folder
    where it goes) had replaced the first already, leaving a new weights.h beside the earlier program. Now the three
    are renamed into place only once all are written."""
    from microgpt.export.c import export_c
    from microgpt.export.c_train import export_training_program
    ckpt_path = tmp_path / 'model.safetensors'
    save_checkpoint(str(ckpt_path), trained_engine(), VOCAB, TCFG, 1, {})
    out = tmp_path / 'out'
    export = {'c': lambda: export_c(load_checkpoint(str(ckpt_path)), str(out)),
              'train': lambda: export_training_program(str(out), str(ckpt_path), data_file, False, None, None)}[kind]
    export()
    files = [out / name for name in ({'c': ['weights.h', 'microgpt_names.c'],
                                      'train': ['train_data.h', 'microgpt_train.c']}[kind] + ['microgpt_common.h'])]
    for path in files:
        path.write_text(f'the earlier {path.name}')
    second = files[1]
    if fault == 'folder in the way':
        second.unlink()
        second.mkdir()
    else:
        real_fdopen, opened = os.fdopen, []

        def full_from_the_second(fd, mode, **kw):
            opened.append(fd)
            return _FullDisk(real_fdopen(fd, mode, **kw), 10 ** 9 if len(opened) == 1 else 0)
        monkeypatch.setattr(os, 'fdopen', full_from_the_second)
    before = {p.name: p.read_bytes() if p.is_file() else None for p in out.iterdir()}
    with pytest.raises(MicrogptError) as info:
        export()
    monkeypatch.undo()
    assert str(info.value).startswith(f"{second}: cannot write the C program: "), info.value
    assert {p.name: p.read_bytes() if p.is_file() else None for p in out.iterdir()} == before


@pytest.mark.parametrize('room', [0, 20000])
@pytest.mark.parametrize('kind', ['c', 'train', 'web'])
def test_an_export_into_a_new_folder_that_fails_leaves_no_folder(tmp_path, data_file, monkeypatch, kind, room):
    """...and an export into a new folder left it behind, empty or holding the files written before the one that
    failed."""
    from microgpt.export.c import export_c
    from microgpt.export.c_train import export_training_program
    from microgpt.export.web import export_web
    ckpt_path = tmp_path / 'model.safetensors'
    save_checkpoint(str(ckpt_path), trained_engine(), VOCAB, TCFG, 1, {})
    out = tmp_path / 'new' / 'out'
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, mode, **kw: _FullDisk(real_fdopen(fd, mode, **kw), room))
    with pytest.raises(MicrogptError, match='No space left on device'):
        {'c': lambda: export_c(load_checkpoint(str(ckpt_path)), str(out)),
         'train': lambda: export_training_program(str(out), str(ckpt_path), data_file, False, None, None),
         'web': lambda: export_web(str(ckpt_path), str(out))}[kind]()
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_a_first_checkpoint_on_a_full_disk_claims_nothing_kept(tmp_path, monkeypatch):
    """The message said 'the checkpoints already there are kept' in a folder that held none."""
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, 'fdopen', lambda fd, mode: _FullDisk(real_fdopen(fd, mode), 0))
    path = tmp_path / 'resume.safetensors'
    with pytest.raises(MicrogptError, match='nothing was written in its place'):
        save_checkpoint(str(path), trained_engine(), VOCAB, TCFG, 1, {})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_metrics_of_the_steps_shown(tmp_path, data_file, monkeypatch):
    """The record of an evaluated step was written after its checkpoint: when that save failed (a full disk), the
    step and its held-out loss had been printed and metrics.jsonl held nothing of them."""
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, 'fdopen', lambda fd, mode: _FullDisk(real_fdopen(fd, mode), 0))
    out = tmp_path / 'run'
    code, stdout, err = run_cli_in_process('train', '--data', data_file, '--steps', 3, '--eval-every', 1,
                                           '--val-fraction', 0.3, '--out', out)
    assert_one_line_error(code, err, 'No space left on device')
    assert 'step    1 /    3' in stdout and 'val loss' in stdout, stdout
    records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [(r['step'], 'val_loss' in r) for r in records] == [(1, True)], records


def test_a_failed_block_removes_only_what_it_made(tmp_path):
    """folder_for decided the folder was its own by looking before it made it: a process that lost that race
    removed the folder another was writing into. Now only a folder this call made, and only the files the block
    wrote, go; what anyone else put there stays, and so does the folder then."""
    from microgpt.tempfiles import folder_for, write_new_text
    new = tmp_path / 'a' / 'b'
    with pytest.raises(KeyboardInterrupt):
        with folder_for(str(new)) as written:
            (new / 'mine.txt').write_text('x')
            written.append(str(new / 'mine.txt'))
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # the parent it made too
    with pytest.raises(OSError):
        with folder_for(str(new)) as written:
            (new / 'theirs.txt').write_text('another process wrote this meanwhile')
            raise OSError(errno.ENOSPC, 'full')
    assert os.listdir(new) == ['theirs.txt'], os.listdir(new)
    with pytest.raises(OSError):
        with folder_for(str(new)) as written:  # a folder it did not make
            raise OSError(errno.ENOSPC, 'full')
    assert os.listdir(new) == ['theirs.txt'], os.listdir(new)
    assert write_new_text(str(new / 'record.json'), 'first') and not write_new_text(str(new / 'record.json'), 'second')
    assert (new / 'record.json').read_text() == 'first' and sorted(os.listdir(new)) == ['record.json', 'theirs.txt']


def test_a_record_is_written_once_on_a_file_system_without_links(tmp_path, monkeypatch):
    """FAT and some network mounts have no hard links: the record is then made exclusively in place."""
    from microgpt.tempfiles import write_new_text

    def no_links(src, dst):
        raise PermissionError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(os, 'link', no_links)
    path = tmp_path / 'search.json'
    assert write_new_text(str(path), 'first') and not write_new_text(str(path), 'second')
    assert path.read_text() == 'first' and os.listdir(tmp_path) == ['search.json'], os.listdir(tmp_path)


def test_a_folder_moved_while_the_run_writes_stops_the_run_at_its_next_save(tmp_path):
    """`mv DIR DIR.old; mkdir DIR` during a run: metrics.jsonl (an open file) followed the folder, the checkpoints
    (written by path) went into the new one, whose lock a second run could take: a run spread over two folders,
    exit 0. The run stops at its next save, with everything it wrote in the folder it started in."""
    data, out_dir, moved = tmp_path / 'names.txt', tmp_path / 'run', tmp_path / 'run.old'
    data.write_text('\n'.join(['emma', 'olivia', 'ava', 'isabella', 'sophia'] * 20) + '\n')

    class MovesTheFolderAtItsFirstSteps(io.StringIO):
        def write(self, text):
            if 'step' in text and not moved.exists():
                os.rename(out_dir, moved)
                os.mkdir(out_dir)
            return super().write(text)
    err = io.StringIO()
    code = main(['train', '--data', str(data), '--steps', '300', '--save-every', '100', '--out', str(out_dir)],
                out=MovesTheFolderAtItsFirstSteps(), err=err)
    assert code == 2 and 'the folder was moved or replaced while this run wrote in it' in err.getvalue(), \
        (code, err.getvalue())
    assert os.listdir(out_dir) == [] and 'metrics.jsonl' in os.listdir(moved), (os.listdir(out_dir), os.listdir(moved))
