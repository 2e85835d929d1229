"""Regenerates `wavlm_authors.npz` with the WavLM authors' own code (not in this repo).

    git clone <microsoft/unilm> /tmp/unilm      # its wavlm/WavLM.py and wavlm/modules.py
    PYTHONPATH=/tmp/unilm/wavlm python tests/golden/make_wavlm_golden.py --out tests/golden/wavlm_authors.npz

For each config of `CONFIGS` (a Base-like one: group-norm front end, post-LN layers; a
Large-like one: layer-norm front end, pre-LN layers, normalised input; both tiny, with heads
16 wide) it builds the authors' `WavLM(WavLMConfig(cfg))` from `torch.manual_seed(0)`, moves
every 1-d weight off its 1 / 0 init, and runs `extract_features(wav, ret_layer_results=True)`
on a seeded 0.15 s waveform (119 frames: offsets beyond `max_distance` share its bucket). Stored, float32, under `{name}/`:
the checkpoint's state dict (`model/<key>`), its cfg as JSON, the input and every layer's
output (`layer_results[1:]`) and the final output `x` (LayerNorm'ed for pre-LN).
"""

import argparse
import json

import numpy as np
import torch
from WavLM import WavLM, WavLMConfig  # the authors' file, from PYTHONPATH

_SHAPE = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
              conv_feature_layers="[(16,10,5)] + [(16,3,2)] + [(16,2,2)]", conv_pos=8, conv_pos_groups=4,
              relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True)
CONFIGS = {
    "base": dict(_SHAPE, extractor_mode="default", layer_norm_first=False, normalize=False),
    "large": dict(_SHAPE, extractor_mode="layer_norm", layer_norm_first=True, normalize=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = {}
    wav = torch.randn(1, 2400, generator=torch.Generator().manual_seed(1))
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = WavLM(WavLMConfig(cfg)).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
            (x, layers), _ = model.extract_features(wav, ret_layer_results=True, output_layer=cfg["encoder_layers"])
            final, _ = model.extract_features(wav)
        out[f"{name}/cfg"] = np.array(json.dumps(cfg))
        out[f"{name}/wav"] = wav.numpy()
        out[f"{name}/layers"] = torch.stack([h.transpose(0, 1) for h, _ in layers[1:]]).numpy()
        out[f"{name}/final"] = final.numpy()
        for k, v in model.state_dict().items():
            out[f"{name}/model/{k}"] = v.numpy()
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
