"""Seeded inputs shared by the golden test and `make_golden.py`; plain torch, no package import.

`make_golden.py` runs inside the official code's process, where the import name
`lighthubert` is the official package, so nothing here may import ours.
"""

from __future__ import annotations

import random

import torch

SEED = 20220329
SUBNET_SEEDS = (1, 2)  # random.Random(s) subnets per space, after default / max / min
SAMPLES = 8000  # 0.5 s of 16 kHz audio -> 24 frames
PROJECTIONS = 8  # hidden states are stored as projections on this many seeded unit vectors


def official_state(shapes: dict[str, tuple], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Well-conditioned random weights for the official key layout, in sorted key order."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("weight_g"):
            t = 1.0 + 0.2 * torch.rand(shape, generator=g)
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=g) / fan_in**0.5
        elif key == "mask_emb":
            t = torch.rand(shape, generator=g)
        elif key.endswith("weight"):  # LayerNorm scales
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.05 * torch.randn(shape, generator=g)
        state[key] = t
    return state


def audio(seed: int = SEED) -> torch.Tensor:
    """(1, SAMPLES) speech-like test signal: two harmonics with vibrato plus noise, normalised."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(SAMPLES) / 16000.0
    f0 = 140.0 + 20.0 * torch.sin(2 * torch.pi * 3.0 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / 16000.0
    x = torch.sin(phase) + 0.5 * torch.sin(3 * phase) + 0.1 * torch.randn(SAMPLES, generator=g)
    x = (x - x.mean()) / (x.var(unbiased=False) + 1e-5).sqrt()  # F.layer_norm(x, x.shape)
    return x.unsqueeze(0)


def projection(width: int = 768, seed: int = SEED) -> torch.Tensor:
    """(width, PROJECTIONS) seeded unit columns; a subnet of width e uses the first e rows."""
    g = torch.Generator().manual_seed(seed + 1)
    p = torch.randn(width, PROJECTIONS, generator=g)
    return p / p.norm(dim=0, keepdim=True)


def subnet_plan(space: str) -> list[tuple[str, int]]:
    """Names of the golden subnets of a space: the three named ones and the seeded samples."""
    return [("default", 0), ("max", 0), ("min", 0)] + [("random", s) for s in SUBNET_SEEDS]


def python_random(seed: int) -> random.Random:
    return random.Random(seed)
