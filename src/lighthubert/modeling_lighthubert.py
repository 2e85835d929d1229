"""transformers model of a LightHuBERT subnet: `model.HuBERT` as a `PreTrainedModel`.

The remote code of an `hf` export (see `configuration_lighthubert.py`); `model.py` is copied
beside it unchanged, so the folder runs the same code as `lighthubert.load`. Imports only
torch and transformers.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_lighthubert import LightHuBERTConfig
from .model import HuBERT, ModelConfig


class LightHuBERTModel(PreTrainedModel):
    """Our dense HuBERT (per-layer heads and FFN widths) behind transformers' model interface.

    `hidden_states[0]` is the projected CNN output (`post_extract_proj`, the official
    LightHuBERT convention, as `lighthubert.extract`), not transformers' input of layer 1;
    `hidden_states[i]` is layer i's output, as in `HubertModel`.
    """

    config_class = LightHuBERTConfig
    base_model_prefix = "hubert"
    main_input_name = "input_values"

    def __init__(self, config: LightHuBERTConfig) -> None:
        super().__init__(config)
        self.hubert = HuBERT(ModelConfig(**config.lighthubert))  # written by export.save_hf
        self.post_init()

    def _init_weights(self, module: Any) -> None:
        """Nothing to do: `HuBERT` initialises itself, and an export holds every weight."""

    def forward(self, input_values: Tensor, attention_mask: Optional[Tensor] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                **kwargs: Any) -> BaseModelOutput:
        """(B, N) waveforms, normalised when the feature extractor's `do_normalize` says so;
        `attention_mask` (B, N) marks the valid samples of a padded batch."""
        lengths = None if attention_mask is None else attention_mask.long().sum(-1)
        hidden = tuple(self.hubert(input_values, lengths).hidden_states)
        keep = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return BaseModelOutput(last_hidden_state=hidden[-1], hidden_states=hidden if keep else None)
