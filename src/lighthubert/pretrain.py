"""HuBERT iteration 1 for small teachers: k-means units of MFCCs, masked prediction of them.

Hsu et al. (2021), first iteration: cluster 39-dim MFCC frames (13 cepstra, deltas,
delta-deltas) with k-means, then train a HuBERT to predict each masked frame's cluster from
the unmasked context. The loss is fairseq's: project the last layer (`final_proj`), take the
cosine similarity with one embedding per unit (`label_embs_concat`) over a temperature of 0.1,
and apply cross entropy over the masked frames. The recipe plugs into `trainer.Trainer` (data,
schedule, checkpoints, resume and DDP are shared) and the checkpoint is a fairseq HuBERT
`.pt`, so every command that takes a teacher reads it.

The units live on HuBERT's 50 Hz grid: `probes.mfcc` frames are the conv front end's frames
one for one, which needs the standard front end's 400-sample receptive field and 320 hop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from . import checkpoint, convert
from .data import AudioDataset
from .losses import span_mask
from .model import Features, HuBERT, ModelConfig
from .probes import mfcc

if TYPE_CHECKING:
    from .trainer import DistillConfig

log = logging.getLogger(__name__)

MFCC_RECEPTIVE_FIELD, MFCC_HOP = 400, 320  # samples per MFCC frame and between frames (`probes.mfcc`)
KMEANS_ITERATIONS = 30

# HuBERT Base's shape and regularisation (fairseq `hubert_base_librispeech.yaml`); `model` overrides them.
TEACHER_DEFAULTS: dict[str, Any] = {"extractor_mode": "default", "pred_dim": 0, "normalize": False, "layerdrop": 0.05,
                                    "dropout_input": 0.1, "feature_grad_mult": 0.1}


@dataclass
class Units:
    """A k-means codebook over standardised MFCC frames: the pre-training targets."""

    mean: Tensor  # (39,) per-dimension mean of the clustered frames
    std: Tensor  # (39,) and standard deviation: every dimension weighs the same in the distance
    centroids: Tensor  # (K, 39) in standardised units

    def assign(self, wav: Tensor) -> Tensor:
        """(B, N) equal-length waveforms -> (B, T) int64 unit of each MFCC frame."""
        feats = torch.stack([mfcc(w) for w in wav.detach().cpu().float()])
        return _nearest((feats - self.mean) / self.std, self.centroids).to(wav.device)

    def state(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std, "centroids": self.centroids}


def _nearest(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (Euclidean) for each row of x (..., D)."""
    d = (x * x).sum(-1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(-1)
    return d.argmin(-1)


def kmeans(x: Tensor, k: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> Tensor:
    """k-means++ seeding then Lloyd iterations on (N, D) float32; returns (k, D) centroids.

    An emptied cluster is re-seeded at the point farthest from its centroid, so all k units
    stay in use (fairseq's MiniBatchKMeans does the same with `reassignment_ratio`).
    """
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=gen)]
    closest = ((x - centroids[0]) ** 2).sum(-1)
    for _ in range(1, k):
        pick = torch.multinomial(closest / closest.sum(), 1, generator=gen)
        centroids = torch.cat([centroids, x[pick]])
        closest = torch.minimum(closest, ((x - x[pick]) ** 2).sum(-1))
    for _ in range(iterations):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            far = ((x - centroids[assign]) ** 2).sum(-1).topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    return centroids


def fit_units(dataset: AudioDataset, clusters: int, max_frames: int, seed: int, progress: bool = False) -> Units:
    """Clusters MFCC frames of up to `max_frames` frames from files drawn at random (seeded).

    Raises:
        ValueError: fewer readable frames than clusters.
    """
    order = np.random.default_rng(seed).permutation(len(dataset))
    feats, frames = [], 0
    bar = tqdm(total=max_frames, unit="frame", desc="MFCC for k-means", disable=not progress)
    for i in order:
        wav = dataset[int(i)]["wav"]
        if wav is None or wav.numel() < MFCC_RECEPTIVE_FIELD:
            continue
        feats.append(mfcc(wav))
        frames += len(feats[-1])
        bar.update(len(feats[-1]))
        if frames >= max_frames:
            break
    bar.close()
    if frames < clusters:
        raise ValueError(f"k-means needs at least clusters={clusters} MFCC frames; the training set gave {frames}")
    x = torch.cat(feats)[:max_frames].double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
    z = ((x - mean) / std).float()
    log.info("k-means: %d units over %d MFCC frames from %d files", clusters, len(z), len(feats))
    return Units(mean.float(), std.float(), kmeans(z, clusters, seed))


class UnitPredictor(HuBERT):
    """A HuBERT with fairseq's pre-training head (`final_proj`, `label_embs_concat`).

    `prediction` holds the logits over units: cosine(final_proj(last layer), unit embedding)
    / `logit_temp`, which is fairseq's `compute_nce` with every other unit as a negative.
    """

    def __init__(self, cfg: ModelConfig, units: int, final_dim: int, logit_temp: float) -> None:
        super().__init__(cfg)
        self.logit_temp = logit_temp
        self.final_proj = nn.Linear(cfg.embed_dim, final_dim)
        self.label_embs_concat = nn.Parameter(torch.empty(units, final_dim).uniform_())  # fairseq: nn.init.uniform_

    def forward(self, wav: Tensor, lengths: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Features:
        out = super().forward(wav, lengths, mask)
        proj = F.normalize(self.final_proj(out.hidden_states[-1]).float(), dim=-1)
        logits = proj @ F.normalize(self.label_embs_concat.float(), dim=-1).T / self.logit_temp
        return out._replace(prediction=logits)


class HuBERTRecipe:
    """HuBERT iteration 1 as a `Trainer` recipe: no teacher; the targets are MFCC k-means units.

    The units are fitted on the first training batch's call (rank by rank, from the same
    seeded sample of files) unless a resumed checkpoint brought them.
    """

    @property
    def find_unused_parameters(self) -> bool:
        """Layerdrop leaves whole layers out of a step (DDP must be told); no masking leaves `mask_emb` out."""
        return self.model_cfg.layerdrop > 0 or self.cfg.mask_prob <= 0

    def __init__(self, cfg: "DistillConfig", train_set: AudioDataset, progress: bool = True) -> None:
        self.cfg, self.train_set, self.progress = cfg, train_set, progress
        self.model_cfg = ModelConfig.from_dict({**ModelConfig().asdict(), **TEACHER_DEFAULTS, **cfg.model})
        receptive, hop = 1, 1
        for _, kernel, stride in self.model_cfg.conv_layers:
            receptive, hop = receptive + (kernel - 1) * hop, hop * stride
        if (receptive, hop) != (MFCC_RECEPTIVE_FIELD, MFCC_HOP):
            raise ValueError(f"model.conv_layers give frames of {receptive} samples every {hop}; the MFCC units need "
                             f"HuBERT's {MFCC_RECEPTIVE_FIELD} every {MFCC_HOP} (kernels 10,3,3,3,3,2,2, strides 5,2,...)")
        self.units: Optional[Units] = None

    def build_student(self, teacher: None, init: Optional[str]) -> UnitPredictor:
        if init:
            raise ValueError("pretrain-teacher starts from random weights; --init is not supported (use --resume)")
        return UnitPredictor(self.model_cfg, self.cfg.clusters, self.cfg.final_dim, self.cfg.logit_temp)

    def subnets(self, step: int) -> list[None]:
        return [None]

    def valid_subnets(self) -> dict[str, None]:
        return {"teacher": None}

    def targets(self, teacher: None, wav: Tensor) -> Tensor:
        if self.units is None:
            self.units = fit_units(self.train_set, self.cfg.clusters, self.cfg.kmeans_frames, self.cfg.seed, self.progress)
        return self.units.assign(wav)

    def loss(self, model: nn.Module, student: UnitPredictor, sub: None, wav: Tensor, target: Tensor,
             generator: torch.Generator) -> Tensor:
        """Cross entropy of the units of the masked frames (of all frames with loss_on=all)."""
        mask = span_mask(wav.size(0), target.size(1), self.cfg.mask_prob, self.cfg.mask_length, generator).to(wav.device)
        logits = model(wav, mask=mask if self.cfg.mask_prob > 0 else None).prediction
        if self.cfg.loss_on == "masked":
            if not mask.any():
                raise ValueError("the loss mask selects no frame; raise mask_prob or use loss_on=all")
            return F.cross_entropy(logits[mask], target[mask])
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    def save(self, student: UnitPredictor) -> dict[str, Any]:
        """A fairseq HuBERT checkpoint (`cfg.model._name: hubert`) with the head and the codebook."""
        m = student.cfg
        state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        heads = {k: state.pop(k) for k in ("final_proj.weight", "final_proj.bias", "label_embs_concat")}
        model_cfg = convert.fairseq_config(m, dropout=m.dropout, final_dim=self.cfg.final_dim, logit_temp=self.cfg.logit_temp,
                                           label_rate=50, mask_prob=self.cfg.mask_prob, mask_length=self.cfg.mask_length)
        return {"cfg": {"model": model_cfg,
                        "task": {"_name": "hubert_pretraining", "normalize": m.normalize, "sample_rate": 16000,
                                 "labels": ["km"], "label_rate": 50}},
                "model": {**convert.ours_to_official(state, m.extractor_mode), **heads},
                "units": self.units.state() if self.units is not None else None}

    def restore(self, student: UnitPredictor, ckpt: dict[str, Any], source: str) -> None:
        state, heads = convert.official_to_ours(ckpt["model"])
        state.update({k: ckpt["model"][k] for k in heads})
        checkpoint.load_state(student, state, source)
        if ckpt.get("units"):
            self.units = Units(**ckpt["units"])

