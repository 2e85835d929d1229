"""A student's first weights from its teacher (`init_from_teacher`), and an account of what was left out.

`model.matching_state` picks the teacher tensors of the same role and shape. A WavLM or
data2vec teacher has tensors the HuBERT-shaped student has no place for (the relative
position bias, a positional encoder of another kind); a teacher wider than the student space
(WavLM Large for the 768-wide base space) has no layer tensor that fits. The first is
reported in one line, the second refused: a start from the conv front end alone is a random
start in disguise.
"""

from __future__ import annotations

from torch import nn

from .model import FRONT_END, HuBERT, matching_state


def init_from_teacher(teacher: HuBERT, student: nn.Module) -> str:
    """Loads into `student` every tensor of `teacher` of the same role and shape.

    Returns:
        One line: how many tensors were copied, and which of the teacher's were not and why.

    Raises:
        ValueError: nothing fits, or the teacher is wider than the student and none of its
            Transformer-layer tensors fits (WavLM Large for the base space); naming both shapes
            and what would fit. A narrower teacher (a supernet's subnet) still gives its front end.
    """
    copied = matching_state(teacher, student)
    t, s = teacher.cfg, student.cfg
    layers_fit = any(k.startswith("encoder.layers.") for k in copied)
    if not copied or (not layers_fit and t.embed_dim > s.embed_dim):
        fit = "cannot hold the teacher's layers" if t.embed_dim > s.embed_dim else "shares no tensor shape with the teacher"
        raise ValueError(
            f"init_from_teacher: the student (embed_dim {s.embed_dim}, heads {s.heads[0]} of {s.head_dim}, ffn_dim "
            f"{s.ffn_dim[0]}) {fit} (embed_dim {t.embed_dim}, heads {t.heads[0]} of "
            f"{t.head_dim}, ffn_dim {t.ffn_dim[0]}, {t.depth} layers), so nothing useful would be copied; use a teacher of "
            f"the student's widths (a base-size HuBERT / WavLM / data2vec for the base space), a space whose maximum "
            f"subnet has the teacher's widths, or --set init_from_teacher=false to start from random weights")
    student.load_state_dict(copied, strict=False)
    left = [k for k in teacher.state_dict() if k not in copied and not k.startswith("layer_pred_heads.")]
    groups = {
        "WavLM's relative position bias and its gates (the student has none)":
            [k for k in left if ".self_attn.grep_" in k or ".relative_attention_bias." in k],
        f"data2vec's positional encoder ({t.pos_conv_layers} convs with LayerNorm; the student's is one weight-normed conv)"
        if t.pos_conv_layers else "the positional conv (another shape)": [k for k in left if k.startswith("encoder.pos_conv.")],
        "the conv front end (it reads the waveform another way)": [k for k in left if k.startswith(FRONT_END)],
    }
    grouped = {k for keys in groups.values() for k in keys}
    groups["tensors of other shapes"] = [k for k in left if k not in grouped]
    missed = [f"{name} ({len(keys)} tensors)" for name, keys in groups.items() if keys]
    return (f"student initialised from the teacher: {len(copied)} of {len(student.state_dict())} tensors copied"
            + (f"; not copied: {'; '.join(missed)}" if missed else ""))
