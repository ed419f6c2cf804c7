"""The one exception type the command line turns into `microgpt: error: ...` (exit status 2)."""


class MicrogptError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
