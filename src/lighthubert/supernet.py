"""LightHuBERT: the once-for-all supernet, `model.HuBERT` built from elastic layers.

`set_subnet()` switches every elastic layer to a subnet's shape (the weights stay shared);
`export()` hands back the dense `HuBERT` of that shape with copied weights.
"""

from __future__ import annotations

from typing import Union

import torch

from .elastic import ELASTIC
from .model import HuBERT, ModelConfig
from .space import SearchSpace, SubnetConfig, count_subnet_params


class LightHuBERT(HuBERT):
    """A supernet over `space`; starts at the space's default subnet.

    The official model is left at its max subnet after construction (reference notes §4);
    we pick the default explicitly, and every caller can `set_subnet` what it needs.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space.model, ELASTIC)
        self.space = space
        self.subnet = space.default
        self.set_subnet(space.default)

    def set_subnet(self, subnet: Union[SubnetConfig, str, dict]) -> SubnetConfig:
        """Activates `subnet` (a `SubnetConfig`, `default`/`max`/`min`, JSON or a dict).

        Raises:
            ValueError: when the subnet is outside the search space (names the field).
        """
        sub = self.space.subnet(subnet)
        e, head_dim = sub.embed_dim, self.cfg.head_dim
        full = [c for c, _k, _s in self.cfg.conv_layers]
        for block, c in zip(self.feature_extractor.conv_layers, sub.conv_dim or full):
            block.set_active(c)  # a space whose front end is fixed runs it at full width
        self.post_extract_proj.set_active(e)
        kept = self.space.kept_layers(sub.depth)
        for i, h, f in zip(kept, sub.heads, sub.ffn_dim):
            layer = self.encoder.layers[i]
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.set_active(h * head_dim)
            layer.self_attn.out_proj.set_active(e)
            layer.fc1.set_active(f)
            layer.fc2.set_active(e)
        self.encoder.kept_layers = list(kept)
        self.subnet = sub
        return sub

    def num_params(self) -> int:
        """Official parameter count of the active subnet (`calc_sampled_param_num`)."""
        return count_subnet_params(self.space, self.subnet)

    @torch.no_grad()
    def export(self, subnet: Union[SubnetConfig, str, dict, None] = None) -> tuple[HuBERT, ModelConfig]:
        """The dense model of `subnet` (default: the active one), with cloned weights.

        Returns:
            The `HuBERT` and the `ModelConfig` that rebuilds it; its layer j is supernet
            layer `space.kept_layers(depth)[j]`.
        """
        if subnet is not None:
            self.set_subnet(subnet)
        sub = self.subnet
        cfg = self.space.model_config(sub)
        dense = HuBERT(cfg).to(self.mask_emb)
        e, c_in = sub.embed_dim, 1
        for i, block in enumerate(self.feature_extractor.conv_layers):
            dense.feature_extractor.conv_layers[i] = block.export(c_in)
            c_in = block.active_out_channels
        if self.layer_norm is not None:
            dense.layer_norm = self.layer_norm.export(cfg.conv_dim)
        dense.post_extract_proj = self.post_extract_proj.export(cfg.conv_dim)
        dense.mask_emb.copy_(self.mask_emb[:e])
        dense.encoder.pos_conv[0] = self.encoder.pos_conv[0].export(e)
        dense.encoder.layer_norm = self.encoder.layer_norm.export(e)
        for j, i in enumerate(self.encoder.kept_layers):
            src, dst = self.encoder.layers[i], dense.encoder.layers[j]
            a = sub.heads[j] * self.cfg.head_dim
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(dst.self_attn, name, getattr(src.self_attn, name).export(e))
            dst.self_attn.out_proj = src.self_attn.out_proj.export(a)
            dst.self_attn_layer_norm = src.self_attn_layer_norm.export(e)
            dst.fc1 = src.fc1.export(e)
            dst.fc2 = src.fc2.export(sub.ffn_dim[j])
            dst.final_layer_norm = src.final_layer_norm.export(e)
        if len(self.layer_pred_heads):
            (head,) = self.layer_pred_heads.values()
            dense.layer_pred_heads[str(sub.depth - 1)] = head.export(e)
        return dense.train(self.training), cfg
