"""`python -m bnrep` and the `bnrep` command.

The command's modules take 1-2 s to load (torch among them); a Ctrl-C then is one line and exit 130, as
at any later moment (bnrep.flags.main_guard), not the traceback of an import."""

import os
import sys


def console() -> None:
    try:
        from bnrep.cli import console as command
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        os._exit(130)  # nothing started yet; a half-imported module's teardown is not worth waiting for
    command()


if __name__ == "__main__":
    console()
