"""Shared pieces of the benchmarks: one result row, and interleaved timing.

Every comparison times OUR code and a REFERENCE doing the same work, alternately, round after round
(A B, then B A, ...), so that load from other processes or clock drift hits both sides alike. A row's
ratio is the median over rounds of (reference seconds / our seconds) for that round: higher is better,
and 1.0 means equally fast.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the results table. `ratio` is higher-is-better; `target` is the least acceptable ratio."""

    bench: str  # loss | augment | train | probe | cuda
    case: str  # what was measured, sizes included
    ours: str  # our side, formatted with its unit
    reference: str  # the reference side, formatted with its unit
    ratio: float | None = None  # None for rows that are facts (correctness) or skipped
    target: float | None = None  # the ratio the project aims for (None: no target, informative)
    met: str = ""  # "yes" / "no" / "-" (no target) / "skipped"
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)  # numbers behind the formatted columns (json only)

    def __post_init__(self) -> None:
        o, r = self.raw.get("ours_s"), self.raw.get("reference_s")
        if o and r and len(o) > 1:  # timed rows: show the spread of the per-round ratios, so noise is visible
            ratios = [b / a for a, b in zip(o, r)]
            self.note = f"{self.note}; " * bool(self.note) + f"{len(o)} rounds: {min(ratios):.2f}-{max(ratios):.2f}x"
        if not self.met:
            if self.ratio is None or self.target is None:
                self.met = "-"
            else:
                self.met = "yes" if self.ratio >= self.target else "no"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def skipped(bench: str, case: str, why: str) -> Row:
    return Row(bench, case, "-", "-", met="skipped", note=why)


def interleaved(
    ours: Callable[[], float | None],
    reference: Callable[[], float | None],
    rounds: int,
    sync: Callable[[], None] = lambda: None,
) -> tuple[list[float], list[float]]:
    """Seconds of `ours` and `reference` over `rounds` interleaved rounds (the order flips every round).

    A callable may return its own measurement in seconds (e.g. the training time a run records); when it
    returns None its wall time is used, between two calls of `sync` (torch.cuda.synchronize on a GPU).
    Warm-up is the caller's job (it differs per benchmark).
    """
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    pair = [("ours", ours), ("reference", reference)]
    for r in range(rounds):
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            sync()
            t0 = time.perf_counter()
            measured = fn()
            sync()
            times[name].append(measured if measured is not None else time.perf_counter() - t0)
    return times["ours"], times["reference"]


def speedup(ours: list[float], reference: list[float]) -> float:
    """Median over rounds of reference / ours (paired by round, so drift between rounds cancels)."""
    return statistics.median(r / o for o, r in zip(ours, reference))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_rate(per_s: float, unit: str) -> str:
    return f"{per_s:,.0f} {unit}/s" if per_s >= 100 else f"{per_s:.3g} {unit}/s"


def finite_positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0
