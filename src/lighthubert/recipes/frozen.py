"""What a recipe's student never trains, frozen before the trainer builds the optimiser and DDP
wraps the model.

DDP without unused-parameter search (`find_unused_parameters=False`, the fast path every
fixed-shape recipe takes) waits for a gradient of every tensor that requires one: a tensor
that requires grad but never gets one stops the next step with "Expected to have finished
reduction in the prior iteration". Frozen therefore means `requires_grad=False`, not only
"run under `no_grad`".
"""

from __future__ import annotations

from ..model import HuBERT


def freeze_untrained(student: HuBERT, masked: bool) -> None:
    """Sets `requires_grad=False` on the conv front end when `feature_grad_mult` is 0 (the model
    runs it under `no_grad`) and on `mask_emb` when the recipe never masks (`masked` False)."""
    if student.cfg.feature_grad_mult == 0:
        student.feature_extractor.requires_grad_(False)
    if not masked:
        student.mask_emb.requires_grad_(False)
