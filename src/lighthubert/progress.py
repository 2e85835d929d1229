"""Progress for a terminal or for a log file.

tqdm redraws its bar in place with carriage returns: right on a terminal, but in a file (a
SLURM log, `2> file`) every redraw stays, and a long run leaves hundreds of MB of them.
`progress_bar` gives tqdm when stderr is a terminal and otherwise a `LineProgress`, which
writes the same figures (n/total, rate, elapsed, ETA, the postfix) as one plain line at most
once per `every` units or, without `every`, once per `seconds` (default 30, or
$LIGHTHUBERT_PROGRESS_SECONDS). Named so that call sites with a `progress` flag and a `bar`
variable can import it as it is.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO, Union

from tqdm import tqdm

SECONDS_ENV = "LIGHTHUBERT_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def _is_terminal(stream: Optional[TextIO]) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _seconds_from_env() -> float:
    text = os.environ.get(SECONDS_ENV, "")
    if not text:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{SECONDS_ENV}={text!r}: expected a positive number of seconds")
    return seconds


class LineProgress:
    """tqdm's interface as used here (update, set_postfix, close, `with`, iteration, n, total),
    writing one plain line per `every` units (or per `seconds`) and a last one on close."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every: Optional[int] = None, seconds: Optional[float] = None,
                 file: Optional[TextIO] = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = self._shown = initial
        self.every = every
        self.seconds = seconds if seconds is not None or every is not None else _seconds_from_env()
        self.file = file or sys.stderr
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.every is not None:
            due = self.n // self.every > self._shown // self.every
        else:
            due = time.monotonic() - self._last >= self.seconds
        if due:
            self._write()

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs: Any) -> None:
        """As tqdm's: `key=value` pairs after the figures, numbers in tqdm's short format
        (`refresh` is taken for tqdm's signature; the next line shows the pairs)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={tqdm.format_num(v) if isinstance(v, (int, float)) else v}"
                                 for k, v in items.items())

    def close(self) -> None:
        if not self._closed and self.n != self._shown:
            self._write()
        self._closed = True

    def line(self) -> str:
        """The figures as one line (tqdm's own formatting, without the bar)."""
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            fmt = head + "{n_fmt}/{total_fmt} {unit} ({percentage:.1f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        else:
            fmt = head + "{n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"
        total = self.total and max(self.total, self.n)  # past its total (k-means' last file) tqdm would print "?/0.0%"
        return tqdm.format_meter(self.n, total, time.monotonic() - self._start, unit=self.unit,
                                 initial=self.initial, postfix=self.postfix, bar_format=fmt)

    def _write(self) -> None:
        self.file.write(self.line() + "\n")
        self.file.flush()
        self._shown, self._last = self.n, time.monotonic()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable to go through")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Progress = Union[tqdm, LineProgress]


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[float] = None, desc: str = "", unit: str = "it",
                 disable: bool = False, initial: int = 0, every: Optional[int] = None,
                 seconds: Optional[float] = None, file: Optional[TextIO] = None) -> Progress:
    """A tqdm bar when `file` (stderr by default) is a terminal, else a `LineProgress`.

    `every`: a plain line per that many units (the trainer passes `log_every` steps); None: a
    line per `seconds` (default 30 or $LIGHTHUBERT_PROGRESS_SECONDS). Disabled: tqdm's no-op.
    """
    stream = file or sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc or None, unit=unit, disable=disable, initial=initial, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every=every, seconds=seconds,
                        file=stream)
