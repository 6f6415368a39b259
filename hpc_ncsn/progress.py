"""One progress bar for every long stage: training steps, samples drawn, images through the extractor, the toy.

tqdm on stderr, with rate and ETA, on the main process only. On a terminal it redraws
twice a second; in a batch job's log (not a terminal) it writes a whole line every 30 s
(tqdm's carriage-return redraws become newlines), so a Slurm log shows progress, one
line at a time, without being flooded.
"""

from __future__ import annotations

import sys

from .distributed import is_main_process

__all__ = ["progress_bar"]


def progress_bar(total: float, desc: str, unit: str, *, initial: float = 0, enabled: bool = True):
    """A tqdm bar over `total` `unit`s (float updates allowed: the count is shown rounded); silent when there is
    nothing to do (a rerun that finds everything done)."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    counts = "{n:.0f}/{total:.0f}" if isinstance(total, float) or isinstance(initial, float) else "{n_fmt}/{total_fmt}"
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                disable=not (enabled and total > 0 and is_main_process()), mininterval=0.5 if tty else 30.0,
                file=sys.stderr if tty else _LogLines(sys.stderr),
                bar_format="{desc}: {percentage:3.0f}%|{bar}| " + counts + " {unit} [{elapsed}<{remaining}, "
                           "{rate_fmt}{postfix}]")


class _LogLines:
    """A file for tqdm that turns each redraw ('\\r' + the bar) into one line of a log."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()
