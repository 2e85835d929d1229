"""CTC fine-tuning for speech recognition (the `ctc` method, `lighthubert finetune`).

Any model `lighthubert.load` reads (a supernet at a chosen subnet, an exported subnet, a
stage-1 student, a teacher, DistilHuBERT) becomes the encoder of a `model.HuBERTCTC`: its
dense weights plus a linear CTC head over the characters of the training labels (fairseq's
`.ltr` files beside the manifests). The recipe follows fairseq's HuBERT `base_10h.yaml`, which
the LightHuBERT maintainers used for the paper's ASR table (official issue #5): the conv
front end frozen (`feature_grad_mult` 0), the rest of the encoder frozen for the first
`freeze_encoder_steps` updates (only the head learns), time masks with `mask_emb` and
channel masks, layerdrop, CTC summed over tokens and averaged over utterances, Adam at lr 2e-5
without weight decay. Utterances are padded, never cropped (a crop would cut the transcript).
`random_init` fine-tunes the same shape from random weights: the baseline for pre-training.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from .. import checkpoint, safeload
from ..formats import ctc
from ..audio import normalize
from ..data import AudioDataset, Batch
from ..losses import ctc_loss, span_mask
from ..model import BLANK, HuBERT, HuBERTCTC
from ..space import SubnetConfig
from .frozen import freeze_untrained

log = logging.getLogger(__name__)


@dataclass
class CTCFinetuneConfig:
    """Settings of CTC fine-tuning; defaults from fairseq's HuBERT `base_10h.yaml`."""

    subnet: Optional[str] = None  # for a supernet --init: default | max | min | JSON; None: the checkpoint's own
    random_init: bool = False  # --init's shape and vocabulary with random weights (seeded): what pre-training is worth
    feature_grad_mult: float = 0.0  # gradient scale of the conv front end; 0 freezes it (base_10h)
    freeze_encoder_steps: int = 10_000  # updates that train the head alone (fairseq freeze_finetune_updates)
    mask_prob: float = 0.75  # time-span mask start probability (masked frames get mask_emb)
    mask_length: int = 10  # time-span length in frames
    mask_channel_prob: float = 0.5  # channel-span mask start probability (channels zeroed in every frame)
    mask_channel_length: int = 64  # channel-span length
    layerdrop: float = 0.1  # probability of skipping a Transformer layer in a training step
    dropout: float = 0.0  # dropout after attention, FFN and on the encoder input
    activation_dropout: float = 0.1  # dropout inside the FFN
    final_dropout: float = 0.0  # dropout before the CTC head

    def __post_init__(self) -> None:
        for name in ("freeze_encoder_steps",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mask_length", "mask_channel_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.feature_grad_mult < 0:
            raise ValueError(f"feature_grad_mult must be >= 0, got {self.feature_grad_mult}")
        for name in ("mask_prob", "mask_channel_prob", "dropout", "activation_dropout", "final_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.layerdrop < 1:
            raise ValueError(f"layerdrop must be in [0, 1), got {self.layerdrop}")


class CTCRecipe:
    """CTC fine-tuning as a `Trainer` recipe.

    Args:
        settings: the recipe's settings.
        teacher: must be None (fine-tuning learns from transcripts).
        init: the model to fine-tune (required): any checkpoint `lighthubert.load` reads; a
            fine-tuned CTC model continues with its own vocabulary and head.
        seed: unused (masks come from the trainer's generator).
    """

    name: ClassVar[str] = "ctc"
    description: ClassVar[str] = "ctc"
    Settings: ClassVar[type] = CTCFinetuneConfig
    labels: ClassVar[Optional[str]] = "ltr"
    batching: ClassVar[str] = "pad"
    # base_10h: Adam (0.9, 0.98), eps 1e-8, no weight decay, lr 2e-5, 25k updates, no clipping,
    # 3.2 M samples per GPU; tri-stage with wav2vec 2.0 base_10h's phases (10% warm-up, 40% hold).
    trainer_defaults: ClassVar[dict] = {
        "lr": 2e-5, "eps": 1e-8, "weight_decay": 0.0, "schedule": "tri_stage", "warmup": 0.1, "hold": 0.4,
        "final_lr_scale": 0.05, "max_steps": 25_000, "grad_clip": 0.0, "max_batch_samples": 3_200_000,
        "max_sample_size": 35 * 16_000, "min_sample_size": 4_000}

    def __init__(self, settings: CTCFinetuneConfig, teacher: Union[str, Path, HuBERT, None] = None,
                 init: Optional[str] = None, seed: int = 1) -> None:
        if teacher is not None:
            raise ValueError("method ctc fine-tunes a model on transcripts; it takes no teacher (pass the model as --init)")
        if not init:
            raise ValueError("method ctc needs the model to fine-tune: pass --init CHECKPOINT")
        self.settings, self.init = settings, init
        self.frozen = settings.freeze_encoder_steps > 0

    def build(self, train_set: AudioDataset, device: torch.device, progress: bool) -> HuBERTCTC:
        s = self.settings
        source = checkpoint.load_model(self.init, s.subnet)
        if isinstance(source, HuBERTCTC):
            vocab, self.vocab_origin = source.vocab, f"the vocabulary of {self.init}"
        else:
            vocab = [BLANK] + sorted(set(chain.from_iterable(train_set.labels)))
            self.vocab_origin = "made from the training labels"
        self.index = {t: i for i, t in enumerate(vocab)}
        encoder, cfg = checkpoint.dense_model(source)
        cfg = dataclasses.replace(cfg, pred_dim=0, dropout=s.dropout, activation_dropout=s.activation_dropout,
                                  layerdrop=s.layerdrop, feature_grad_mult=s.feature_grad_mult)
        student = HuBERTCTC(cfg, vocab, s.final_dropout)  # random weights, from the trainer's seed
        if s.random_init:
            if s.feature_grad_mult == 0:
                log.warning("random_init with feature_grad_mult 0: the random conv front end never trains")
        else:
            self._load_weights(student, encoder, source)
        freeze_untrained(student, masked=s.mask_prob > 0)  # a 0 feature_grad_mult: the front end stays as it is
        log.info("fine-tuning %s (%s%s) with a CTC head over %d tokens", self.init, SubnetConfig.of(cfg).describe(),
                 ", random weights" if s.random_init else "", len(vocab))
        return student

    def _load_weights(self, student: HuBERTCTC, encoder: HuBERT, source: HuBERT) -> None:
        """The pre-trained encoder's weights (and a fine-tuned --init's head) into `student`."""
        state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("layer_pred_heads.")}
        if isinstance(source, HuBERTCTC):
            state.update({k: v for k, v in source.state_dict().items() if k.startswith("ctc_proj.")})
        missing, unexpected = student.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"ctc_proj.weight", "ctc_proj.bias"}:
            raise safeload.CheckpointError(f"{self.init}: encoder does not fit its own shape (missing {missing[:3]}, "
                                             f"unexpected {unexpected[:3]})")

    def check_labels(self, dataset: AudioDataset) -> None:
        """Refuses a label token the built model cannot output, before the first step: found
        by `targets` it would stop the run only when its batch comes, for the validation set an
        hour of training later. One pass over the labels (linear in the utterances).

        Raises:
            ValueError: the label file and 1-based line of the first such token, and the token.
        """
        known = self.index.keys()
        if set(chain.from_iterable(dataset.labels)) <= known:
            return
        i = next(i for i, row in enumerate(dataset.labels) if not known >= set(row))
        token = next(t for t in dataset.labels[i] if t not in known)
        raise ValueError(f"{dataset.label_source(i)}: character {token!r} is not in the fine-tuning vocabulary "
                         f"({''.join(t for t in self.index if t != BLANK)}, {self.vocab_origin}); fix the label file "
                         "or fine-tune on labels that hold it")

    @property
    def find_unused_parameters(self) -> bool:
        """The frozen first updates leave the encoder out, and layerdrop some layers."""
        return self.settings.freeze_encoder_steps > 0 or self.settings.layerdrop > 0

    def subnets(self, step: int) -> list[None]:
        self.frozen = step < self.settings.freeze_encoder_steps
        return [None]

    def valid_subnets(self) -> dict[str, None]:
        return {"ctc": None}

    def targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The batch's labels as CTC targets: (concatenated token indices, length per row); every
        token is in the vocabulary (`check_labels` saw each label file before the first step)."""
        rows = [torch.tensor([self.index[t] for t in tokens], dtype=torch.long) for tokens in batch.labels]
        return torch.cat(rows).to(batch.wav.device), torch.tensor([len(r) for r in rows], device=batch.wav.device)

    def loss(self, model: nn.Module, student: HuBERTCTC, sub: None, batch: Batch, target: tuple[Tensor, Tensor],
             generator: torch.Generator) -> Tensor:
        s = self.settings
        wav = normalize(batch.wav, batch.lengths) if student.cfg.normalize else batch.wav
        frames = student.frame_lengths(batch.lengths)
        mask = channels = None
        if student.training:  # masks are training-time augmentation; validation scores clean input
            cpu_frames = frames.cpu()
            mask = span_mask(wav.size(0), int(cpu_frames.max()), s.mask_prob, s.mask_length, generator,
                             lengths=cpu_frames).to(wav.device) if s.mask_prob > 0 else None
            channels = span_mask(wav.size(0), student.cfg.embed_dim, s.mask_channel_prob, s.mask_channel_length,
                                 generator, min_spans=0).to(wav.device) if s.mask_channel_prob > 0 else None
        out = model(wav, batch.lengths, mask=mask, channel_mask=channels, freeze_encoder=self.frozen and student.training)
        return ctc_loss(out.prediction.float().log_softmax(-1), frames, *target)

    def save(self, student: HuBERTCTC) -> dict[str, Any]:
        return ctc.checkpoint(student)

    def restore(self, student: nn.Module, ckpt: dict[str, Any], source: str) -> None:
        checkpoint.restore_weights(student, ckpt, source)

