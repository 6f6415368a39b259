"""One progress bar for every long stage: training steps, samples drawn, images through the extractor, the toy.

tqdm on stderr, with rate and ETA, on the main process only. On a terminal it redraws
twice a second; in a batch job's log (not a terminal) it writes a whole line every 30 s
(tqdm's carriage-return redraws become newlines), so a Slurm log shows progress, one
line at a time, without being flooded; it writes nothing before the first unit is done.
Used as a context manager, a bar that ends in an exception vanishes (on a terminal it is
cleared), so an error is the one line the user sees.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from .distributed import is_main_process

__all__ = ["progress_bar", "showing_progress"]


def progress_bar(total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True):
    """A tqdm bar over `total` `unit`s; silent when there is nothing to do (a rerun that finds everything done)."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    log = None if tty else _LogLines(sys.stderr)
    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
               disable=not (enabled and total > 0 and is_main_process()), mininterval=0.5 if tty else 30.0,
               file=log or sys.stderr,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, "
                          "{rate_fmt}{postfix}]")
    if log is not None:
        log.bar = bar
    return bar


@contextmanager
def showing_progress(total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True):
    """`progress_bar` that is closed on the way out, and cleared (not left) when the way out is an exception."""
    bar = progress_bar(total, desc, unit, initial=initial, enabled=enabled)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


class _LogLines:
    """A file for tqdm that turns each redraw ('\\r' + the bar) into one line of a log."""

    def __init__(self, stream):
        self.stream = stream
        self.bar = None  # the bar it serves: nothing is written before it is known and past 0

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and self.bar is not None and self.bar.n > 0:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()
