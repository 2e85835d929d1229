"""Regenerates `official.npz` with the official LightHuBERT implementation (not in this repo).

    git clone <mechanicalsea/lighthubert> /tmp/official        # at d53e545
    PYTHONPATH=/tmp/official python tests/golden/make_golden.py --out tests/golden/official.npz

For each space (base, small) and subnet of `seeded.subnet_plan` it builds the official model,
loads `seeded.official_state` (random weights from a fixed seed), runs `extract_features(...,
ret_hs=True)` on `seeded.audio()` and stores every hidden state projected on
`seeded.projection()`, float32. Random subnets are drawn by the official `sample_subnet()`
after `random.seed(s)`, and stored as JSON so the test also checks our sampler.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import seeded  # noqa: E402
from lighthubert import LightHuBERT, LightHuBERTConfig  # noqa: E402  (the official package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out, x, proj = {}, seeded.audio(), seeded.projection()
    for space in ("base", "small"):
        cfg = LightHuBERTConfig()
        cfg.supernet_type = space
        model = LightHuBERT(cfg).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        result = model.load_state_dict(seeded.official_state(shapes), strict=True)
        assert not result.missing_keys
        for name, seed in seeded.subnet_plan(space):
            if name == "random":
                random.seed(seed)
                subnet = model.supernet.sample_subnet()
            else:
                subnet = {"default": model.supernet.subnet, "max": model.supernet.max_subnet,
                          "min": model.supernet.min_subnet}[name]
                subnet = {k: v for k, v in subnet.items() if k != "ffn_ratio"}
            model.set_sample_config(subnet)
            with torch.no_grad():
                hs, _ = model.extract_features(x, ret_hs=True)
            key = f"{space}/{name}{seed or ''}"
            out[key] = np.stack([(h[0] @ proj[: h.size(-1)]).numpy() for h in hs]).astype(np.float32)
            out[key + "/subnet"] = np.array(json.dumps(subnet))
            out[key + "/params"] = np.array(model.calc_sampled_param_num())
            print(key, out[key].shape, out[key + "/params"])
    np.savez_compressed(args.out, **out)


main()
