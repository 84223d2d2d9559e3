"""Progress of long stages in any log: a line every `every_s` seconds with done/total, rate and ETA.

A SLURM log or `make run > log` has no TTY, so a progress bar draws nothing there; these lines go
through `logging` (Hydra writes them to the console and to the job's log file). Where there is a TTY
the model stages use Lightning's progress bar instead (`use_bar()`).
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("coxlmm.progress")


def use_bar() -> bool:
    """True when stderr is a terminal: draw Lightning's progress bar rather than log lines."""
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class Progress:
    """`update(n)` as work is done; a line at most every `every_s` seconds, and one at the end."""

    def __init__(self, desc: str, total: int | None, unit: str = "items", every_s: float = 30.0,
                 logger: logging.Logger = log):
        self.desc, self.total, self.unit, self.every_s, self.log = desc, total, unit, every_s, logger
        self.done = 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = duration(eta) if eta != float("inf") else "?"
            return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %), "
                    f"{rate:.1f} {self.unit}/s, ETA {eta_s}")
        return f"{self.desc}: {self.done} {self.unit}, {rate:.1f} {self.unit}/s"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            elapsed = time.monotonic() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self.log.info("%s: done, %d %s in %s (%.1f %s/s)", self.desc, self.done, self.unit, duration(elapsed),
                          rate, self.unit)
