"""The one exception type the command line turns into `microgpt: error: ...` (exit status 2)."""


class MicrogptError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


class PeersLost(MicrogptError):
    """Another process of a data-parallel run stopped. PyTorch's gloo may then abort this process as it tears
    down ("terminate called without an active exception"), so the command line ends it at once after the
    message (cli._entry)."""
