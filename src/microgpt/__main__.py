"""`python -m microgpt` and the `microgpt` command. The command line's modules (NumPy among them) take a few tenths
of a second to import: a Ctrl-C then exits 130 with one line, as it does later, not with a traceback."""

import sys


def main():
    try:
        from .cli import _entry
    except KeyboardInterrupt:
        try:
            print("microgpt: interrupted", file=sys.stderr, flush=True)
        except (OSError, ValueError, AttributeError):  # standard error closed or full: the status says it
            pass
        sys.exit(130)
    _entry()


if __name__ == '__main__':
    main()
