"""HuBERT iteration 1 for small teachers: k-means units of MFCCs, masked prediction of them.

Hsu et al. (2021), first iteration: cluster 39-dim MFCC frames (13 cepstra, deltas,
delta-deltas) with k-means, then train a HuBERT to predict each masked frame's cluster from
the unmasked context. The loss is fairseq's: project the last layer (`final_proj`), take the
cosine similarity with one embedding per unit (`label_embs_concat`) over a temperature of 0.1,
and apply cross entropy over the masked frames. The recipe is the `hubert` method of `trainer.Trainer`
(data, schedule, checkpoints, resume and DDP are shared; `lighthubert pretrain-teacher`) and
the checkpoint is a fairseq HuBERT `.pt`, so every command that takes a teacher reads it.

The units live on HuBERT's 50 Hz grid: `probes.mfcc` frames are the conv front end's frames
one for one, which needs the standard front end's 400-sample receptive field and 320 hop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checkpoint, safeload
from .. import settings as typed  # `settings` is the recipe's own settings object here
from ..formats import fairseq
from ..audio import normalize
from ..data import AudioDataset, Batch
from ..losses import span_mask
from ..model import Features, HuBERT, ModelConfig
from ..probes import mfcc
from ..progress import progress_bar
from .frozen import freeze_untrained

log = logging.getLogger(__name__)

MFCC_RECEPTIVE_FIELD, MFCC_HOP = 400, 320  # samples per MFCC frame and between frames (`probes.mfcc`)
KMEANS_ITERATIONS = 30

# HuBERT Base's shape and regularisation (fairseq `hubert_base_librispeech.yaml`); `model` overrides them.
TEACHER_DEFAULTS: dict[str, Any] = {"extractor_mode": "default", "pred_dim": 0, "normalize": False, "layerdrop": 0.05,
                                    "dropout_input": 0.1, "feature_grad_mult": 0.1}


class FrameFeatures:
    """What the units cluster, frame by frame on HuBERT's 50 Hz grid: 39-dim MFCCs (iteration
    1), or one hidden state of an earlier model (iteration 2: HuBERT clusters layer 6 of its
    first 12-layer model; `units_from`, `units_layer`)."""

    def __init__(self, model: Optional[HuBERT] = None, layer: int = 0) -> None:
        self.model, self.layer = model, layer
        if model is not None:
            model.eval().requires_grad_(False)
            if not 0 <= layer <= model.cfg.depth:
                raise ValueError(f"units_layer must be in 0..{model.cfg.depth} (the units model's hidden states), got {layer}")

    @torch.no_grad()
    def __call__(self, wav: Tensor) -> Tensor:
        """(B, N) equal-length waveforms -> (B, T, D) float32 frame features, on the CPU."""
        wav = wav.detach().float()
        if self.model is None:
            return torch.stack([mfcc(w) for w in wav.cpu()])
        model = self.model.to(wav.device)
        x = normalize(wav) if model.cfg.normalize else wav
        return model(x).hidden_states[self.layer].float().cpu()


@dataclass
class Units:
    """A k-means codebook over standardised frame features: the pre-training targets."""

    mean: Tensor  # (D,) per-dimension mean of the clustered frames
    std: Tensor  # (D,) and standard deviation: every dimension weighs the same in the distance
    centroids: Tensor  # (K, D) in standardised units

    def assign(self, wav: Tensor, features: FrameFeatures) -> Tensor:
        """(B, N) equal-length waveforms -> (B, T) int64 unit of each frame."""
        return _nearest((features(wav) - self.mean) / self.std, self.centroids).to(wav.device)

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


def fit_units(dataset: AudioDataset, clusters: int, max_frames: int, seed: int, progress: bool = False,
              features: Optional[FrameFeatures] = None) -> Units:
    """Clusters the frame features of up to `max_frames` frames from files drawn at random (seeded).

    Raises:
        ValueError: fewer readable frames than clusters.
    """
    features = features or FrameFeatures()
    order = np.random.default_rng(seed).permutation(len(dataset))
    feats, frames = [], 0
    bar = progress_bar(total=max_frames, unit="frame", desc="features for k-means", disable=not progress)
    for i in order:
        wav = dataset[int(i)]["wav"]
        if wav is None or wav.numel() < MFCC_RECEPTIVE_FIELD:
            continue
        feats.append(features(wav[None])[0])
        frames += len(feats[-1])
        bar.update(len(feats[-1]))
        if frames >= max_frames:
            break
    bar.close()
    if frames < clusters:
        raise ValueError(f"k-means needs at least clusters={clusters} frames; the training set gave {frames}")
    x = torch.cat(feats)[:max_frames].double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
    z = ((x - mean) / std).float()
    log.info("k-means: %d units over %d frames (%d-dim) from %d files", clusters, len(z), z.size(1), len(feats))
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


@dataclass
class HuBERTPretrainConfig:
    """Settings of HuBERT pre-training (the `hubert` method, `lighthubert pretrain-teacher`)."""

    model: dict = field(default_factory=dict)  # the teacher's ModelConfig fields over HuBERT Base's shape (TEACHER_DEFAULTS)
    clusters: int = 100  # k-means units of the MFCC frames (HuBERT iteration 1: 100)
    kmeans_frames: int = 250_000  # MFCC frames (50 per second) clustered, from files drawn at random
    final_dim: int = 256  # width of final_proj and of the unit embeddings
    logit_temp: float = 0.1  # temperature of the cosine logits
    units_from: Optional[str] = None  # iteration 2: cluster a hidden state of this model (any checkpoint) instead of MFCCs
    units_layer: int = 0  # iteration 2: which hidden state of units_from (0: the projected CNN output, i: layer i)
    loss_on: str = "masked"  # masked: cross entropy on masked frames only | all: every frame
    mask_prob: float = 0.8  # span-mask start probability (fairseq hubert_base_librispeech.yaml)
    mask_length: int = 10  # span length in frames

    def __post_init__(self) -> None:
        if self.loss_on not in ("masked", "all"):
            raise ValueError(f"loss_on must be one of ['masked', 'all'], got {self.loss_on!r}")
        for name, low in (("clusters", 2), ("kmeans_frames", 2), ("final_dim", 1), ("mask_length", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.kmeans_frames < self.clusters:
            raise ValueError(f"kmeans_frames ({self.kmeans_frames}) must be at least clusters ({self.clusters})")
        if not self.logit_temp > 0:
            raise ValueError(f"logit_temp must be positive, got {self.logit_temp}")
        if not 0 <= self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
        if self.loss_on == "masked" and self.mask_prob == 0:
            raise ValueError("loss_on masked needs masks: raise mask_prob above 0 or use loss_on=all")


class HuBERTRecipe:
    """HuBERT pre-training as a `Trainer` recipe: no teacher; the targets are k-means units of
    MFCC frames (iteration 1) or of an earlier model's hidden state (iteration 2, `units_from`).

    The units are fitted on the first training batch's call (rank by rank, from the same
    seeded sample of files) unless a resumed checkpoint brought them.
    """

    name: ClassVar[str] = "hubert"
    description: ClassVar[str] = "hubert"
    Settings: ClassVar[type] = HuBERTPretrainConfig
    # fairseq hubert_base_librispeech.yaml: 8% warm-up then linear decay, crops of 250,000 samples.
    labels: ClassVar[Optional[str]] = None
    batching: ClassVar[str] = "crop"
    trainer_defaults: ClassVar[dict] = {"schedule": "linear", "warmup": 0.08, "hold": 0.0, "max_sample_size": 250_000}

    def __init__(self, settings: HuBERTPretrainConfig, teacher: Optional[str] = None, init: Optional[str] = None,
                 seed: int = 1) -> None:
        if teacher:
            raise ValueError("method hubert pre-trains a teacher from MFCC units; it takes no teacher")
        if init:
            raise ValueError("pretrain-teacher starts from random weights; --init is not supported (use --resume)")
        self.settings, self.seed = settings, seed
        self.model_cfg = typed.from_dict(ModelConfig, {**ModelConfig().asdict(), **TEACHER_DEFAULTS, **settings.model}, "model")
        receptive, hop = 1, 1
        for _, kernel, stride in self.model_cfg.conv_layers:
            receptive, hop = receptive + (kernel - 1) * hop, hop * stride
        if (receptive, hop) != (MFCC_RECEPTIVE_FIELD, MFCC_HOP):
            raise ValueError(f"model.conv_layers give frames of {receptive} samples every {hop}; the MFCC units need "
                             f"HuBERT's {MFCC_RECEPTIVE_FIELD} every {MFCC_HOP} (kernels 10,3,3,3,3,2,2, strides 5,2,...)")
        self.units: Optional[Units] = None
        self.train_set: Optional[AudioDataset] = None
        self.progress = False
        source = checkpoint.load_teacher(settings.units_from) if settings.units_from else None
        if source is not None:
            fe = source.feature_extractor
            if (fe.min_samples(1), fe.min_samples(2) - fe.min_samples(1)) != (MFCC_RECEPTIVE_FIELD, MFCC_HOP):
                raise ValueError(f"units_from {settings.units_from}: its frames are not HuBERT's ({MFCC_RECEPTIVE_FIELD} "
                                 f"samples every {MFCC_HOP}), so its units would not line up with the model's frames")
        self.features = FrameFeatures(source, settings.units_layer)

    @property
    def find_unused_parameters(self) -> bool:
        """Layerdrop leaves whole layers out of a step (DDP must be told)."""
        return self.model_cfg.layerdrop > 0

    def build(self, train_set: AudioDataset, device: torch.device, progress: bool) -> UnitPredictor:
        self.train_set, self.progress = train_set, progress
        s = self.settings
        student = UnitPredictor(self.model_cfg, s.clusters, s.final_dim, s.logit_temp)
        freeze_untrained(student, masked=s.mask_prob > 0)
        return student

    def subnets(self, step: int) -> list[None]:
        return [None]

    def valid_subnets(self) -> dict[str, None]:
        return {"teacher": None}

    def targets(self, batch: Batch) -> Tensor:
        if self.units is None:
            if self.train_set is None:
                raise RuntimeError("HuBERTRecipe.build must run before targets (it brings the training set)")
            s = self.settings
            self.units = fit_units(self.train_set, s.clusters, s.kmeans_frames, self.seed, self.progress, self.features)
        return self.units.assign(batch.wav, self.features)

    def loss(self, model: nn.Module, student: UnitPredictor, sub: None, batch: Batch, target: Tensor,
             generator: torch.Generator) -> Tensor:
        """Cross entropy of the units of the masked frames (of all frames with loss_on=all); the
        student reads each utterance normalised when its config says so, as every consumer of
        the checkpoint (`task.normalize`) feeds it."""
        s, wav = self.settings, batch.wav
        mask = span_mask(wav.size(0), target.size(1), s.mask_prob, s.mask_length, generator).to(wav.device)
        logits = model(normalize(wav) if student.cfg.normalize else wav, mask=mask if s.mask_prob > 0 else None).prediction
        if s.loss_on == "masked":
            return F.cross_entropy(logits[mask].float(), target[mask])
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    def save(self, student: UnitPredictor) -> dict[str, Any]:
        """A fairseq HuBERT checkpoint (`cfg.model._name: hubert`) with the head and the codebook."""
        m, s = student.cfg, self.settings
        state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        heads = {k: state.pop(k) for k in ("final_proj.weight", "final_proj.bias", "label_embs_concat")}
        model_cfg = fairseq.config_dict(m, dropout=m.dropout, final_dim=s.final_dim, logit_temp=s.logit_temp,
                                        label_rate=50, mask_prob=s.mask_prob, mask_length=s.mask_length)
        return {"cfg": {"model": model_cfg,
                        "task": {"_name": "hubert_pretraining", "normalize": m.normalize, "sample_rate": 16000,
                                 "labels": ["km"], "label_rate": 50}},
                "model": {**fairseq.from_ours(state, m.extractor_mode), **heads},
                "units": self.units.state() if self.units is not None else None}

    def restore(self, student: UnitPredictor, ckpt: dict[str, Any], source: str) -> None:
        state, heads = fairseq.to_ours(ckpt["model"])
        state.update({k: ckpt["model"][k] for k in heads})
        safeload.load_state(student, state, source)
        if ckpt.get("units"):
            self.units = Units(**ckpt["units"])
