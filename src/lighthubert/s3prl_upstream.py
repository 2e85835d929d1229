"""An s3prl upstream for every model `lighthubert.load` reads: SUPERB tasks through s3prl.

s3prl's own `lighthubert_local` runs only the official 768-wide supernets, each at its
hard-coded default subnet, and `hf_hubert_custom` only what transformers' `HubertModel`
holds; this upstream takes any subnet of any supernet, exports, teachers and DistilHuBERT
students. s3prl finds upstreams by name: `s3prl/hub.py` star-imports every
`s3prl/upstream/<name>/hubconf.py`, and `run_downstream.py -u NAME -k CKPT -g CONFIG` calls
`hub.NAME(ckpt=CKPT, model_config=CONFIG, refresh=...)`. docs/interop.md gives the two-line
hubconf that registers `lighthubert_any_local`. Nothing here imports s3prl: the class has
the interface s3prl's runner and `Featurizer` use (`forward(wavs)` returning
`hidden_states`, `get_downsample_rates`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import Tensor, nn

from .checkpoint import load_model
from .audio import collate, normalize
from .model import DistilHuBERT


class UpstreamExpert(nn.Module):
    """s3prl upstream over `lighthubert.load(ckpt, subnet)`.

    Args:
        ckpt: any checkpoint file or folder `lighthubert.load` reads (s3prl's `-k`).
        model_config: for a supernet, the subnet (s3prl's `-g`): a JSON file, a JSON object,
            `default`, `max` or `min`; None keeps the checkpoint's own (s3prl's rule: `max` for
            stage 1, the recorded or default subnet otherwise).
    """

    def __init__(self, ckpt: str, model_config: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__()  # s3prl also passes `refresh` (for downloads): nothing to refresh here
        model = load_model(ckpt, model_config or None)
        self.model = model.without_heads() if isinstance(model, DistilHuBERT) else model
        self.model.encoder.layerdrop = 0.0  # s3prl's upstreams run every layer, also when fine-tuned (-f)

    def get_downsample_rates(self, key: str) -> int:
        """Samples per frame for every feature: the product of the conv strides (320 for HuBERT)."""
        return math.prod(c[2] for c in self.model.cfg.conv_layers)

    def forward(self, wavs: list[Tensor]) -> dict[str, Any]:
        """(N_i,) 16 kHz waveforms, raw -> `hidden_states`: depth + 1 tensors (B, T, E).

        Index 0 is the projected CNN output and index i layer i's output, as s3prl's LightHuBERT
        upstream; each waveform is normalised when the model expects it (the official
        LightHuBERT checkpoints do, as s3prl's upstream does for them). Padded frames of the
        shorter utterances are masked in attention, so each utterance's valid frames equal
        its features alone; s3prl's `Featurizer` trims each to `round(N_i / 320)` frames.
        """
        if self.model.cfg.normalize:
            wavs = [normalize(w) for w in wavs]
        batch, lengths = collate(wavs)
        hidden = list(self.model(batch, lengths.to(batch.device) if len(wavs) > 1 else None).hidden_states)
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}


def lighthubert_any_local(ckpt: str, *args: Any, **kwargs: Any) -> UpstreamExpert:
    """The hubconf entry: `run_downstream.py -u lighthubert_any_local -k CKPT [-g SUBNET]`."""
    return UpstreamExpert(ckpt, *args, **kwargs)

