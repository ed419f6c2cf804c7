"""The one exception type the command line turns into `microgpt: error: ...` (exit status 2)."""


class MicrogptError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


class NotData(MicrogptError):
    """A data file's content is not documents of text (not UTF-8, a NUL byte, an over-long line, no non-blank
    lines, too many distinct characters). fetch.py checks a download for it before keeping the file."""


class Terminated(Exception):
    """A run stopped and saved on SIGTERM (a scheduler's or torchrun's shutdown): exit status 143, 128 + 15."""


class TerminatedAtOnce(KeyboardInterrupt):
    """SIGTERM where nothing is under way to finish and save (cli._interrupt_on_sigterm): a Ctrl-C's clean-up on the
    way out, every `except KeyboardInterrupt` included (a download's temporary removed, a progress bar cleared, the
    fused engine's compiler stopped), then exit status 143."""


class OwnDataError(MicrogptError):
    """In a data-parallel run, this process could not read its --data (another machine's file missing, say): said
    by the process itself, with its rank, where the other processes' errors are left to the first."""


class PeersLost(MicrogptError):
    """Another process of a data-parallel run stopped. PyTorch's gloo may then abort this process as it tears
    down ("terminate called without an active exception"), so the command line ends it at once after the
    message (cli._entry)."""
