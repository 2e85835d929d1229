"""The DDP parameter check (`check_sync_every`) on two real gloo processes on the CPU.

Every rank must run the same collectives and reach the same verdict: a rank that stopped at its
first differing tensor while rank 0 went on broadcasting left the ranks out of step (a hang, or
rank 0 reporting equal weights while rank 1 stops the run).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from lighthubert import distributed

CASES = (0, 5, None)  # the tensor rank 1 changes: the first (the old early exit), the last, none
COLLECTIVE_TIMEOUT_S = 20  # a collective left waiting for its peer raises after this
JOIN_TIMEOUT_S = 120  # a healthy run takes 3-20 s (process start and torch import, by load)


def _model(rank: int, differ: Optional[int]) -> nn.Module:
    """Three linear layers (6 tensors), the same on every rank except tensor `differ` on rank 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    if rank == 1 and differ is not None:
        with torch.no_grad():
            list(model.parameters())[differ].add_(1e-3)
    return model


def _worker(rank: int, store: str, out: str) -> None:
    """Per case: the check as the trainer runs it (`all(...)`), then one more collective, which
    only matches if both ranks ran the same collectives before it, then the per-tensor answer.
    Writes what it saw; a gloo timeout ends the cases (the group is out of step for good)."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    ctx = distributed.Context(rank=rank, local_rank=rank, world_size=2)
    seen: list[dict] = []
    for differ in CASES:
        model = _model(rank, differ)
        try:
            equal = all(distributed.parameters_equal(model, ctx))
            after = torch.tensor([rank + 1.0])
            dist.all_reduce(after)
            seen.append({"equal": equal, "after": float(after),
                         "per_tensor": list(distributed.parameters_equal(model, ctx))})
        except RuntimeError as e:  # gloo's timeout on a collective its peer never joined
            seen.append({"error": str(e).splitlines()[0]})
            break
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_every_rank_sees_a_difference_in_any_tensor(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "store"), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S} s"
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for differ, got in zip(CASES, seen):
            assert "error" not in got, f"rank {rank}, tensor {differ} changed: {got['error']}"
            want = [i != differ for i in range(6)]
            assert got == {"equal": all(want), "after": 3.0, "per_tensor": want}, (rank, differ, got)
        assert len(seen) == len(CASES)


def test_one_process_is_equal_to_itself():
    assert distributed.parameters_equal(_model(0, None), distributed.Context()) == [True] * 6
