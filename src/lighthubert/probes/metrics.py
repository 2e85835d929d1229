"""Scoring CTC output: greedy decoding, and error rates as Levenshtein distance over tokens
summed over a corpus.

WER, CER and PER are all `sum(edit distance) / sum(reference length)` over the test set, as
s3prl's `downstream/ctc/metric.py` scores them (corpus-level, not a mean of per-utterance
rates), with each substitution, insertion and deletion costing 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

BLANK_INDEX = 0  # the CTC blank's index in every vocabulary here (its token is `model.BLANK`, "<blank>")


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """The fewest substitutions, insertions and deletions that turn `hyp` into `ref`.

    Wagner-Fischer with one row kept: O(len(ref) * len(hyp)) time, O(len(hyp)) memory.
    """
    row = list(range(len(hyp) + 1))  # distances from ref[:0] to every prefix of hyp
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus error rate: total edit distance over total reference tokens.

    Raises:
        ValueError: unequal numbers of references and hypotheses, or no reference token.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses; score them in pairs")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("the references hold no token; an error rate needs at least one")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def greedy_tokens(log_probs: Tensor, frames: Tensor, vocab: Sequence[str]) -> list[list[str]]:
    """(B, T, V) scores and (B,) valid frames -> each row's tokens: the best token per frame,
    repeats merged, blanks (`BLANK_INDEX`) dropped."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b in range(best.size(0)):
        path = torch.unique_consecutive(best[b, : int(frames[b])]).tolist()
        out.append([vocab[k] for k in path if k != BLANK_INDEX])
    return out
