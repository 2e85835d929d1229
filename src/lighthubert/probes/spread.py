"""Seed statistics: one figure measured with several probe-head seeds, and the rule that says
whether two such figures differ by more than their seeds move them.

A probe's head seed moves its score (docs/demo.md measured up to 3.5 PER points on one
model), so a difference between two models means something only next to that spread. The
rule, used by every report here: two figures A and B differ *beyond the seed spread* when

    |mean(A) - mean(B)| > SPREAD_FACTOR * sqrt(sd(A)^2 + sd(B)^2)

with `sd` the sample standard deviation over seeds (n - 1 in the denominator) and
`SPREAD_FACTOR` 2. `sqrt(sd(A)^2 + sd(B)^2)` is the standard deviation of the difference of
one run of each, so under normal noise a difference beyond twice it means one seed of each
would rank the two models the same way at least 97.7% of the time. It is deliberately
stricter than a t-test on the means (whose standard error shrinks with the number of seeds):
with 3 seeds an sd is itself rough, and a reader acts on single runs. With one seed there
is no sd, and no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

SPREAD_FACTOR = 2.0  # a difference must exceed this many combined seed sds to rank two figures


@dataclass(frozen=True)
class Spread:
    """A figure at several seeds: every seed's value, their mean and sample sd."""

    values: tuple[float, ...]  # one per seed, in seed order

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a spread needs at least one value (one per seed)")

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(tuple(float(v) for v in values))

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def sd(self) -> Optional[float]:
        """Sample standard deviation (n - 1); None for one value, whose spread is unknown."""
        n = len(self.values)
        if n < 2:
            return None
        return math.sqrt(sum((v - self.mean) ** 2 for v in self.values) / (n - 1))

    def format(self, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
        """`mean ± sd` (just the mean for one seed), each times `scale`: e.g. `48.6 ± 1.2%`."""
        sd = "" if self.sd is None else f" ± {scale * self.sd:.{digits}f}"
        return f"{scale * self.mean:.{digits}f}{sd}{unit}"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "values": list(self.values)}


@dataclass(frozen=True)
class Comparison:
    """`a` against `b` under the rule of this module."""

    difference: float  # mean(a) - mean(b)
    margin: Optional[float]  # SPREAD_FACTOR * sqrt(sd(a)^2 + sd(b)^2); None when either has one seed

    @property
    def beyond_spread(self) -> Optional[bool]:
        """True: the difference exceeds the margin; False: within it; None: no spread measured."""
        return None if self.margin is None else abs(self.difference) > self.margin


def compare(a: Spread, b: Spread, factor: float = SPREAD_FACTOR) -> Comparison:
    """The difference of the means of `a` and `b` and the margin it must exceed to rank them."""
    margin = None if a.sd is None or b.sd is None else factor * math.hypot(a.sd, b.sd)
    return Comparison(a.mean - b.mean, margin)
