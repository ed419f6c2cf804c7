"""Ctrl-C at every stage of `train`: before the first step (reading, compiling) it interrupts at once; from the
first step on it finishes the step and saves; after the last step it finishes the final evaluation and save;
a process waiting on its input ends at once. Each says what is true."""

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT, missing, run_cli_in_process as run, small_train as small, write_names


@pytest.fixture
def data(tmp_path):
    return write_names(tmp_path / 'names.txt')


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """The `microgpt` command imports its modules (NumPy among them) for a few tenths of a second: a Ctrl-C then
    printed a traceback of the import."""
    import types
    from microgpt.__main__ import main
    loading = types.ModuleType('microgpt.cli')

    def interrupted(name):
        raise KeyboardInterrupt
    loading.__getattr__ = interrupted
    monkeypatch.setitem(sys.modules, 'microgpt.cli', loading)
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 130 and capsys.readouterr().err == 'microgpt: interrupted\n'


def test_ctrl_c_before_the_first_step_interrupts_at_once(data, monkeypatch):
    """Reading and compiling run under Python's own SIGINT handler: the first Ctrl-C stops there, at once."""
    import microgpt.train.run as run_module
    handlers = []

    def interrupted_setup(*args, **kwargs):
        handlers.append(signal.getsignal(signal.SIGINT))
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, 'prepare_run', interrupted_setup)
    code, out, err = run(*small(data))
    assert code == 130 and err == 'microgpt: interrupted\n', (code, err)
    assert handlers == [signal.default_int_handler], handlers


@pytest.mark.parametrize('bar', [None, 'a progress bar'])
def test_the_stop_notice_starts_a_line_only_below_a_progress_bar(bar):
    """Standard error that is not a terminal has no bar on the line: the notice began with an empty line."""
    from microgpt.commands import _StopRequest
    err = io.StringIO()
    stop = _StopRequest(err)
    stop.bar = bar
    stop(signal.SIGINT, None)
    lead = '\n' if bar else ''
    want = f"{lead}microgpt: stopping after the steps under way (Ctrl-C again to abort at once)\n"
    assert err.getvalue() == want, err.getvalue()


@pytest.mark.parametrize('out', [None, 'new', 'existing'])
def test_ctrl_c_in_the_first_step_interrupts_at_once(data, tmp_path, monkeypatch, out):
    """The fused engine compiles its kernels inside the first step (a minute cold): a Ctrl-C there said
    'stopping after this step', then compiled on, trained the whole chunk and exited 0 with samples. Nothing of
    the run stays in --out: an empty metrics.jsonl stayed, and the folder the run had made."""
    from microgpt.engines.numpy.engine import NumpyEngine
    first_call = NumpyEngine.train_steps

    def compiling(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered in this Python call, as during numba's compilation
        time.sleep(0.01)
        return first_call(self, *args, **kwargs)

    monkeypatch.setattr(NumpyEngine, 'train_steps', compiling)
    folder = tmp_path / 'runs' / 'run'
    if out == 'existing':
        folder.mkdir(parents=True)
    code, stdout, err = run(*small(data), *(['--out', str(folder)] if out else []))
    assert code == 130 and err == 'microgpt: interrupted\n', (code, err)
    assert 'step' not in stdout, stdout
    assert os.listdir(folder) == [] if out == 'existing' else not (tmp_path / 'runs').exists(), os.listdir(folder)


def test_ctrl_c_during_the_final_save_finishes_it_and_says_so(data, tmp_path, monkeypatch):
    """After the last step nothing is left to train: a Ctrl-C during the final evaluation and save said
    'stopping after this step'. It says what it waits for, the saves complete, and no samples follow."""
    import microgpt.train.run as run_module
    save = run_module.TrainingRun._save

    def interrupted_save(self, name, metrics):
        if self.step == self.tcfg.steps and name == run_module.RESUME_CHECKPOINT:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return save(self, name, metrics)

    monkeypatch.setattr(run_module.TrainingRun, '_save', interrupted_save)
    out = str(tmp_path / 'run')
    code, stdout, err = run(*small(data, '--out', out, '--eval-every', '10'))
    assert code == 130, (code, err)
    assert 'stopping after the steps under way' not in err and 'finishing the final evaluation and save' in err, err
    assert err.endswith(f'trained all 20 steps, saved in {out}; stopped before sampling\nmicrogpt: interrupted\n'), err
    assert 'inference' not in stdout, stdout
    code, info, _ = run('info', '--checkpoint', os.path.join(out, 'resume.safetensors'))
    assert code == 0 and info.splitlines()[1].split()[1] == '20', info


class _Killed(BaseException):
    """A process killed at this point (SIGKILL): nothing the CLI catches."""


def test_a_run_killed_between_its_final_saves_resumes_to_both(data, tmp_path, monkeypatch):
    """Without evaluation the final step saved resume.safetensors, then model.safetensors: killed between the two,
    --resume found nothing left to train and model.safetensors stayed an earlier step's (or missing). The model is
    saved first now, so a kill between them resumes from the step before and saves both."""
    import microgpt.train.run as run_module
    from safetensors.numpy import load_file
    save, saves = run_module.TrainingRun._save, []

    def killed_after_the_first_final_save(self, name, metrics):
        saved = save(self, name, metrics)
        saves.append(name)
        if self.step == self.tcfg.steps:
            raise _Killed
        return saved

    straight = tmp_path / 'straight'
    assert run(*small(data, '--out', straight))[0] == 0
    monkeypatch.setattr(run_module.TrainingRun, '_save', killed_after_the_first_final_save)
    out = tmp_path / 'killed'
    with pytest.raises(_Killed):
        run(*small(data, '--out', out, '--save-every', '10'))
    monkeypatch.undo()
    code, _, err = run('train', '--resume', '--out', out)
    assert code == 0 and 'resuming from step 10' in err, (code, err)
    for name in ('model.safetensors', 'resume.safetensors'):
        want, got = load_file(straight / name), load_file(out / name)
        assert all((want[key] == got[key]).all() for key in want), name


def wait_until_blocked_in_open(pid, timeout=120):
    """Linux names the kernel function a process sleeps in: opening a FIFO without a writer waits for a partner."""
    wchan = f'/proc/{pid}/wchan'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(wchan) as f:
            sleeping_in = f.read()
        if 'partner' in sleeping_in or 'fifo' in sleeping_in:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not reach open() of the FIFO in {timeout} s")


@pytest.mark.parametrize('extra', [[], ['--engine', 'reference']])
def test_ctrl_c_while_reading_a_real_process(tmp_path, extra):
    """The data is a FIFO that nobody writes: the process waits in open(); Ctrl-C ends it with 130 at once."""
    if not os.path.exists('/proc/self/wchan'):
        missing('no /proc/PID/wchan (Linux) to see where the process waits')
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, '-m', 'microgpt', 'train', '--data', str(fifo), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    wait_until_blocked_in_open(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, (proc.returncode, err)
    assert 'stopping after the steps under way' not in err and 'Traceback' not in err, err
    assert err.strip().splitlines()[-1] == 'microgpt: interrupted', err


def test_the_stop_line_quotes_a_folder_with_spaces(data, tmp_path, monkeypatch):
    """'continue with --resume --out dir with spaces' could not be pasted: the folder is shell-quoted."""
    import shlex
    from microgpt.engines.numpy.engine import NumpyEngine
    steps = NumpyEngine.train_steps

    def stopping(self, doc_tokens, start, stop, tcfg, lrs):
        if start == 8:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return steps(self, doc_tokens, start, stop, tcfg, lrs)

    monkeypatch.setattr(NumpyEngine, 'train_steps', stopping)
    out = str(tmp_path / 'dir with spaces')
    code, _, err = run(*small(data, '--out', out))
    assert code == 130 and f'continue with --resume --out {shlex.quote(out)}\n' in err, err


@pytest.mark.parametrize('signals', [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM], [signal.SIGINT, signal.SIGTERM]],
                         ids=['SIGTERM', 'twice', 'after Ctrl-C'])
def test_sigterm_stops_and_saves_as_the_first_ctrl_c_does(data, tmp_path, monkeypatch, signals):
    """SIGTERM, which schedulers and torchrun send to end a process (torchrun to its workers after a second Ctrl-C
    of its own), killed the run with nothing saved since its last save. It now stops after the steps under way,
    saves, and exits 143; it never aborts the save, even after a Ctrl-C, and the run resumes."""
    from microgpt.engines.numpy.engine import NumpyEngine
    steps = NumpyEngine.train_steps

    def stopping(self, doc_tokens, start, stop, tcfg, lrs):
        if start == 8:
            for signum in signals:
                os.kill(os.getpid(), signum)
                time.sleep(0.01)
        return steps(self, doc_tokens, start, stop, tcfg, lrs)

    monkeypatch.setattr(NumpyEngine, 'train_steps', stopping)
    out = tmp_path / 'run'
    code, _, err = run(*small(data, '--out', out))
    assert code == (143 if signals[0] == signal.SIGTERM else 130), (code, err)
    if signals[0] == signal.SIGTERM:
        assert err.startswith('microgpt: terminated: stopping after the steps under way'), err
    assert f'microgpt: stopped at step 16; continue with --resume --out {out}\n' in err, err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.setattr(NumpyEngine, 'train_steps', steps)
    code, resumed, err = run('train', '--resume', '--out', out)
    assert code == 0 and 'microgpt: resuming from step 16' in err, (code, err)


@pytest.mark.slow(seconds=2)  # a process of its own
def test_a_signal_ignored_when_the_run_started_stays_ignored(data, tmp_path):
    """A script's `cmd &` starts it with SIGINT ignored, so that a Ctrl-C at the terminal spares it: the run
    installed its stop request anyway and stopped."""
    script = (f"import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.argv = ['microgpt', 'train', "
              f"'--data', {str(data)!r}, '--steps', '3000', '--num-samples', '0', '--out', {str(tmp_path / 'run')!r}]; "
              f"import microgpt.__main__ as m; m.main()")
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    while line and not line.startswith('step'):
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and 'step 3000 / 3000' in out and 'stopping' not in err, (proc.returncode, err)


def test_ctrl_c_while_the_fused_engine_compiles_stops_the_compiler_and_interrupts(data, monkeypatch):
    """The fused engine compiles on a thread of its own (compile._on_a_new_stack). A Ctrl-C while it compiles
    stops the compiler there too, which releases numba's lock and restores numba's SLP setting before the run
    exits 130; a compiler left running held them, and a process exiting while it ran inside LLVM crashed."""
    from numba.core import config as numba_config
    from microgpt.engines.fused import compile as fused_compile
    slp, seen = numba_config.SLP_VECTORIZE, []
    compile_each = fused_compile._compile_each

    def compiling_for_long(entry_points):
        with fused_compile.slp_vectorizer():
            seen.append(numba_config.SLP_VECTORIZE)
            os.kill(os.getpid(), signal.SIGINT)
            try:
                deadline = time.perf_counter() + 60
                while time.perf_counter() < deadline:  # a compile that would outlast the test, in Python lines
                    time.sleep(0.01)
            except KeyboardInterrupt:
                seen.append('stopped')
                raise

    monkeypatch.setattr(fused_compile, '_compiled', set())  # compile even what this process has compiled
    monkeypatch.setattr(fused_compile, '_compile_each', compiling_for_long)
    started = time.perf_counter()
    code, out, err = run(*small(data, '--engine', 'fused'))
    *notice, last = err.splitlines()  # the compile notice shows when the disk cache lacks the kernels
    assert code == 130 and last == 'microgpt: interrupted' and 'step' not in out, (code, err, out)
    assert all(line.startswith("microgpt: compiling the fused engine's kernels") for line in notice), err
    assert time.perf_counter() - started < 30, "it waited for the compiler"
    assert seen == [1, 'stopped'] and numba_config.SLP_VECTORIZE == slp, (seen, numba_config.SLP_VECTORIZE)
    monkeypatch.setattr(fused_compile, '_compile_each', compile_each)
    assert run(*small(data, '--engine', 'fused'))[0] == 0  # nothing left locked


def test_a_stop_asked_in_another_process_of_the_run_stops_this_one_as_its_own(data, tmp_path, monkeypatch):
    """Under torchrun a Ctrl-C may reach one process only (the second machine's): every process stops after the same
    step (engine.any_process), but the first, which speaks for all, then sampled from the stopped model and exited
    0, as if the run had ended."""
    from microgpt.engines.numpy.engine import NumpyEngine
    asked = []

    def another_process_asks(self, flag):
        asked.append(flag)
        return flag or len(asked) == 3  # another process's Ctrl-C, agreed on at the third chunk
    monkeypatch.setattr(NumpyEngine, 'any_process', another_process_asks)
    monkeypatch.setattr(NumpyEngine, 'chunk_steps', 4, raising=False)
    out = str(tmp_path / 'run')
    code, stdout, err = run(*small(data, '--out', out, '--save-every', '4'))
    assert code == 130 and f'microgpt: stopped at step 12; continue with --resume --out {out}\n' in err, (code, err)
    assert '--- inference' not in stdout, stdout


def test_sigterm_is_taken_once_and_not_by_torchrun_tune_or_study():
    """cli._interrupt_on_sigterm, which the `microgpt` process calls: SIGTERM raises TerminatedAtOnce, once (a second
    while the first's clean-up ran gave a traceback and exit status 1). Not in a process of a torchrun launch (a
    worker that torchrun ended while it waited inside PyTorch's process group ran no handler, and hung until torchrun
    killed it), nor for tune and study, nor where SIGTERM was ignored when the process started."""
    from microgpt import cli
    from microgpt.errors import TerminatedAtOnce
    try:
        for command, rank, taken in (('eval', None, True), ('train', None, True), ('train', 0, False),
                                     ('train', 1, False), ('tune', None, False), ('study', None, False)):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            cli._interrupt_on_sigterm(command, rank)
            assert (signal.getsignal(signal.SIGTERM) == cli._terminate_at_once) == taken, (command, rank)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cli._interrupt_on_sigterm('eval', None)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.signal(signal.SIGTERM, cli._terminate_at_once)
        with pytest.raises(TerminatedAtOnce):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # a second one, during the clean-up: ignored
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_sigterm_while_the_engines_threads_finish_is_raised_as_it_came():
    """The fused engine's threads wait for each other through a Ctrl-C, then raise it: SIGTERM's TerminatedAtOnce came
    out as a plain KeyboardInterrupt ('interrupted', exit status 130, not 143)."""
    import threading
    from microgpt import cli
    from microgpt.engines.fused import threads as fused_threads
    from microgpt.errors import TerminatedAtOnce

    def entry_point(thread, threads, cells):
        if thread == 1:
            time.sleep(0.5)
    signal.signal(signal.SIGTERM, cli._terminate_at_once)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM))
    raised = None
    try:
        timer.start()
        fused_threads.run_on_threads(entry_point, 2)
    except BaseException as error:  # a KeyboardInterrupt escaping the test would end the whole session
        raised = error
    finally:
        timer.join()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert type(raised) is TerminatedAtOnce, repr(raised)
