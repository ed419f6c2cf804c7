"""Standard output that cannot take what is printed: a full disk (at once or part way), an encoding that cannot
print a sample, a closed stream, /dev/full in a real process, --help and --version included: one line, exit 2."""

import errno
import io
import os
import subprocess
import sys

import pytest

from microgpt.cli import main

from helpers import REPO_ROOT, missing, run_cli_in_process as run, small_train as small, write_names


@pytest.fixture
def data(tmp_path):
    return write_names(tmp_path / 'names.txt')


class FullDisk(io.TextIOBase):
    """Standard output on a full disk: every write fails."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullAfter(io.StringIO):
    """A disk that fills after `room` characters: the failure comes in the middle of the output."""

    def __init__(self, room):
        super().__init__()
        self.room = room

    def write(self, text):
        if self.tell() + len(text) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(text)


@pytest.fixture
def accented(tmp_path):
    """Names with a character that ASCII cannot print, and a checkpoint trained on them."""
    path = tmp_path / 'accents.txt'
    path.write_text('\n'.join(['éva', 'zoé', 'chloé', 'noé', 'léa'] * 4) + '\n', encoding='utf-8')
    out = str(tmp_path / 'accented')
    assert run(*small(str(path), '--out', out))[0] == 0
    return str(path), os.path.join(out, 'model.safetensors')


@pytest.mark.parametrize('stream', [FullDisk(), FullAfter(10), FullAfter(200),
                                    io.TextIOWrapper(io.BytesIO(), encoding='ascii')],
                         ids=['full-disk', 'full-after-10', 'full-after-200', 'ascii-encoding'])
@pytest.mark.parametrize('command', ['train', 'sample'])
def test_failing_standard_output_is_one_line(accented, stream, command):
    data, checkpoint = accented
    argv = (small(data, '--num-samples', '40') if command == 'train'
            else ['sample', '--checkpoint', checkpoint, '--num-samples', '40'])
    err = io.StringIO()
    code = main(argv, out=stream, err=err)
    assert code == 2, (code, err.getvalue())
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err.getvalue(), lines
    assert lines[0].startswith(('microgpt: error: cannot write standard output: No space left on device',
                                "microgpt: error: cannot print 'é' in standard output's encoding ascii")), lines


@pytest.mark.parametrize('argv', [['train', '--steps', '5'], ['--version'], ['info', '--checkpoint', 'x']],
                         ids=lambda v: v[0])
def test_closed_standard_output_is_one_line(monkeypatch, argv):
    """`microgpt ... >&-`: Python sets sys.stdout to None, and the first print was an AttributeError traceback."""
    monkeypatch.setattr(sys, 'stdout', None)
    err = io.StringIO()
    code = main(argv, err=err)
    assert (code, err.getvalue()) == (2, 'microgpt: error: standard output is closed; give it a file (> FILE, or '
                                         '> /dev/null)\n'), (code, err.getvalue())


def test_closed_standard_output_in_a_real_process():
    proc = subprocess.run(f'"{sys.executable}" -m microgpt --version >&-', shell=True, stderr=subprocess.PIPE,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith('microgpt: error: standard output is closed'), proc


def test_closed_standard_error_in_a_real_process(data):
    """`microgpt train 2>&-` (a daemon's, cron's): Python sets sys.stderr to None, and the run ended with exit status 1
    and no word, before its first step. It trains; an error still gives its status."""
    run_closed = dict(shell=True, stdout=subprocess.PIPE, text=True, timeout=300, cwd=REPO_ROOT)
    proc = subprocess.run(f'"{sys.executable}" -m microgpt {" ".join(small(data))} 2>&-', **run_closed)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-2:][0].startswith('sample  1: '), proc
    proc = subprocess.run(f'"{sys.executable}" -m microgpt info --checkpoint nowhere 2>&-', **run_closed)
    assert (proc.returncode, proc.stdout) == (2, ''), proc


def test_standard_output_on_dev_full_in_a_real_process(data):
    if not os.path.exists('/dev/full'):
        missing('no /dev/full on this system')
    with open('/dev/full', 'w') as full:
        proc = subprocess.run([sys.executable, '-m', 'microgpt', *small(data)], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr == 'microgpt: error: cannot write standard output: No space left on device\n', proc.stderr


@pytest.mark.parametrize('argv', [['--help'], ['--version'], ['train', '--help'], ['sample', '--help'],
                                  ['export', '--help']], ids=' '.join)
def test_help_and_version_on_dev_full_are_one_line(argv):
    """argparse ignores a failed write of --help and --version: exit 0, the text lost."""
    if not os.path.exists('/dev/full'):
        missing('no /dev/full on this system')
    with open('/dev/full', 'w') as full:
        proc = subprocess.run([sys.executable, '-m', 'microgpt', *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr == 'microgpt: error: cannot write standard output: No space left on device\n', proc.stderr


@pytest.mark.parametrize('flag', ['--out', '--data'])
def test_a_path_with_a_newline_stays_on_the_error_line(tmp_path, flag):
    """A folder named 'a\\nb' split the one-line error in two."""
    odd = tmp_path / 'dir with\nnewline é'
    odd.mkdir()
    (odd / 'model.safetensors').write_bytes(b'')  # --out: a folder that holds a run; --data: a folder
    code, out, err = run('train', flag, str(odd), '--steps', '5')
    assert code == 2 and err.count('\n') == 1 and 'dir with\\nnewline é' in err, (code, err)


@pytest.mark.slow(seconds=2)  # a real pipe, a real signal
def test_output_interrupted_by_ctrl_c_on_a_full_pipe_is_written_whole():
    """A Ctrl-C lets the step under way finish (its handler returns). When it interrupts a write to a full pipe (a
    pager not reading yet), the write returns short, and Python's text stream dropped the rest: a chunk of step lines
    never reached the reader, though the run went on to save after them."""
    import signal
    import time
    lines = ''.join(f"step {i:8d} / 100000 | loss 2.0000\n" for i in range(100000))  # 3.7 MB: it fills the pipe
    script = ("import signal, sys\n"
              "from microgpt.cli import _Output\n"
              "signal.signal(signal.SIGINT, lambda signum, frame: None)\n"
              "lines = ''.join(f'step {i:8d} / 100000 | loss 2.0000\\n' for i in range(100000))\n"
              "print('ready', file=sys.stderr, flush=True)\n"
              "_Output(sys.stdout).write(lines)\n")
    writer = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, 'PYTHONPATH': str(REPO_ROOT / 'src')})
    assert writer.stderr.readline() == b'ready\n'
    time.sleep(0.5)  # writing into the full pipe by now, blocked
    writer.send_signal(signal.SIGINT)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out.decode() == lines, (len(out), len(lines), err[-500:])


@pytest.mark.parametrize('line_buffering', [True, False])
def test_output_on_a_terminal_shows_each_line_as_it_is_written(line_buffering):
    """Standard output writes through the stream's buffer (above): on a terminal (line buffering) each line must still
    reach it at once, not when the buffer fills: `num docs: ...` before the first compile, say."""
    from microgpt.cli import _Output
    raw = io.BytesIO()
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding='utf-8', line_buffering=line_buffering)
    _Output(stream).write('num docs: 5\n')
    assert raw.getvalue() == (b'num docs: 5\n' if line_buffering else b'')
    stream.flush()
    assert raw.getvalue() == b'num docs: 5\n'
