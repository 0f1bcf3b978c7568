"""What the package's command lines share: ending quietly when their reader goes away (``| head``)."""

from __future__ import annotations

import os
import sys
from typing import Callable


def exit_status_of(command: Callable[[], int | None]) -> int:
    """Run ``command`` (a command line's body) and return its exit status.

    A reader that leaves before the output ends (``... | head``) is not an error worth a traceback:
    the command stops, says nothing and returns 1, the status of a writer whose reader went away.
    """
    try:
        status = command()
        sys.stdout.flush()  # inside the try: a full buffer may only fail here
    except BrokenPipeError:
        # Python's documented recipe: stdout goes to devnull, so that the interpreter's own flush
        # at exit finds nothing left to write and stays quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return 0 if status is None else status
