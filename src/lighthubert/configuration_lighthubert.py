"""transformers config of a LightHuBERT subnet: our `ModelConfig` as a `PretrainedConfig`.

Written, with `modeling_lighthubert.py` and `model.py`, into every `hf` export that
transformers' own `HubertModel` cannot hold (per-layer heads or FFN widths, embed dims that
are no multiple of 64): `AutoModel.from_pretrained(folder, trust_remote_code=True)` runs this
package's model without this package. Imports only transformers.
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import PretrainedConfig


class LightHuBERTConfig(PretrainedConfig):
    """`lighthubert`: the `ModelConfig` fields (per-layer `heads` and `ffn_dim`) as a dict."""

    model_type = "lighthubert"

    def __init__(self, lighthubert: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        self.lighthubert = dict(lighthubert or {})
        if self.lighthubert:  # the names transformers' tools look for
            kwargs.setdefault("hidden_size", self.lighthubert["embed_dim"])
            kwargs.setdefault("num_hidden_layers", len(self.lighthubert["heads"]))
        super().__init__(**kwargs)
