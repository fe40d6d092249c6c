"""The base of the project's input errors, and how the command-line entry points report them.

A bad manifest line, audio file, config or checkpoint is the user's to fix. The entry points print
its message on one line and exit 1. They leave out the traceback of the Lightning or torch frames it
passed through. Every other exception is a bug and keeps its traceback. ``--print_traceback``
(``--print-traceback`` on the argparse tools) or ``QWEN_AUDIO_TRACEBACK=1`` shows the traceback of
input errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

TRACEBACK_VARIABLE = "QWEN_AUDIO_TRACEBACK"


class InputError(ValueError):
    """Input the user can fix (a file, a line, a field, a value), not a bug in this code."""


class AudioError(InputError):
    """An audio file that exists but cannot be used.

    It is unreadable, empty, too short, non-finite or silent.
    """


class CheckpointError(InputError):
    """A checkpoint file or folder that does not hold the weights the model needs."""


@contextmanager
def input_errors_reported(print_traceback: bool = False) -> Iterator[None]:
    """Turn an :class:`InputError` raised inside into ``error: MESSAGE`` on stderr.

    The exit status is then 1.
    """
    try:
        yield
    except InputError as err:
        if print_traceback or os.environ.get(TRACEBACK_VARIABLE, "0") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
