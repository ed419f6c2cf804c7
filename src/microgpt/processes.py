"""Worker processes that the tools start (`tune --workers`, `study --workers`): spawned with Ctrl-C held off.

A spawned process inherits its parent's signal mask. Started with SIGINT blocked, a worker cannot be stopped
halfway through importing by a terminal's Ctrl-C, which reaches every process of the group (a traceback in each);
the signal waits, pending, until the worker has said how it takes it, and the parent's own, until it unblocks.
"""

import signal
from contextlib import contextmanager


@contextmanager
def ctrl_c_blocked():
    """SIGINT blocked in this thread (held pending, not lost) for the block; where the system has no signal masks,
    nothing."""
    if not hasattr(signal, 'pthread_sigmask'):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
