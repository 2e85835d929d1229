"""SUPERB through s3prl: our upstream driven by s3prl's own `Featurizer`, and our checkpoints
read by s3prl's own `lighthubert_local` and `distiller_local` upstreams.

s3prl 0.4.18 is installed without its dependencies (`pip install --no-deps s3prl==0.4.18`,
README): its PyPI release requires torchaudio, whose every release pins another torch, and
the modules used here need neither. Outside CI a missing s3prl skips these tests; under CI
(`CI=true`) it fails them.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

import lighthubert
from lighthubert import atomic, formats
from lighthubert.export import save_compact
from lighthubert.model import DistilHuBERT, ModelConfig
from lighthubert.s3prl_upstream import UpstreamExpert, lighthubert_any_local
from lighthubert.space import SubnetConfig

from conftest import demo_like_supernet, randomize_

CONV = [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2  # HuBERT's front end, 64 channels: 320 samples per frame


def s3prl(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"s3prl is not installed ({e}); pip install --no-deps s3prl==0.4.18 (see README, Tests)")


def wavs(*seconds: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(int(s * 16000), generator=g) for s in seconds]


def test_our_upstream_through_s3prl_featurizer(tmp_path):
    """A non-uniform subnet of a custom supernet, chosen with -g: s3prl's Featurizer (uniform
    layer weights at init) over our upstream equals the layer mean of `lighthubert.extract`."""
    interfaces = s3prl("s3prl.upstream.interfaces")
    supernet = demo_like_supernet()
    ckpt = tmp_path / "supernet.pt"
    atomic.save_file(formats.official.checkpoint(supernet), ckpt)
    sub = SubnetConfig(144, (1, 3, 1), (288, 288, 576))
    (tmp_path / "subnet.json").write_text(json.dumps(sub.to_official()))
    upstream = lighthubert_any_local(str(ckpt), model_config=str(tmp_path / "subnet.json"), refresh=False).eval()
    assert upstream.get_downsample_rates("hidden_states") == 20  # the tiny front end's strides 5 x 2 x 2
    featurizer = interfaces.Featurizer(upstream, upstream_device="cpu")
    assert featurizer.layer_num == 4 and featurizer.output_dim == 144
    batch = wavs(0.5, 0.31, 0.77)
    supernet.set_subnet(sub)
    ours = lighthubert.extract(supernet, batch)  # one (4, T_i, 144) per utterance
    with torch.no_grad():
        features = upstream(batch)
        weighted = featurizer(batch, features)
    for i, ref in enumerate(ours):
        t = ref.shape[1]
        assert abs(weighted[i].shape[0] - t) <= 1  # s3prl keeps round(N / 20) frames
        torch.testing.assert_close(weighted[i][:t], ref.mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.stack([h[i, :t] for h in features["hidden_states"]]), ref, atol=1e-5, rtol=0)


def test_downsample_rate_of_hubert_front_end(tmp_path):
    cfg = ModelConfig(conv_layers=CONV, embed_dim=64, heads=[2], ffn_dim=[128], head_dim=32, conv_pos=16,
                      conv_pos_groups=16, pred_dim=0)
    save_compact(lighthubert.HuBERT(cfg).eval(), cfg, tmp_path / "c")
    assert UpstreamExpert(str(tmp_path / "c")).get_downsample_rates("hidden_states") == 320


def _state_matches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of s3prl's model came from our file, and every tensor of the file went in:
    s3prl loads LightHuBERT with strict=False, which would hide a missing key."""
    theirs = model.state_dict()
    assert sorted(theirs) == sorted(state)
    for k, v in state.items():
        assert torch.equal(theirs[k], v), k


def test_s3prl_lighthubert_local_reads_our_official_checkpoint(official_supernet, tmp_path):
    expert_module = s3prl("s3prl.upstream.lighthubert.hubconf")
    model = official_supernet("small")
    model.set_subnet("default")
    ckpt = tmp_path / "small.pt"
    saved = formats.official.checkpoint(model)
    atomic.save_file(saved, ckpt)
    theirs = expert_module.lighthubert_local(str(ckpt)).eval()
    _state_matches(theirs.model, saved["model"])
    upstream = UpstreamExpert(str(ckpt))
    batch = wavs(1.0, 0.6)
    frames = model.frame_lengths(torch.tensor([w.numel() for w in batch])).tolist()
    with torch.no_grad():
        together = upstream(batch)["hidden_states"]
        for i, (w, t) in enumerate(zip(batch, frames)):
            # one utterance at a time: the official code's padded batches change the shorter
            # utterance (its padding mask counts a frame as valid when any sample is); ours do not
            hs, ours = theirs([w])["hidden_states"], upstream([w])["hidden_states"]
            assert len(hs) == len(ours) == 13 and hs[-1].shape == (1, t, 384)  # s3prl's default subnet of small, as ours
            for a, b, c in zip(hs, ours, together):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
                torch.testing.assert_close(c[i : i + 1, :t], b, atol=1e-5, rtol=0)


def test_s3prl_distiller_local_reads_our_distilhubert_checkpoint(tmp_path):
    expert_module = s3prl("s3prl.upstream.distiller.hubconf")
    cfg = ModelConfig(conv_layers=CONV, extractor_mode="default", embed_dim=96, heads=[3] * 2, ffn_dim=[192] * 2,
                      head_dim=32, conv_pos=16, conv_pos_groups=16, pred_dim=0, normalize=False, feature_layer_norm=False)
    torch.manual_seed(0)
    student = randomize_(DistilHuBERT(cfg, [1, 2], 48), 1).eval()  # heads predict a 48-wide teacher
    saved = {"Distiller": formats.s3prl.from_ours(student.state_dict(), cfg.extractor_mode),
             "Config": {"distiller": formats.s3prl.config_dict(cfg, student.targets, target_dim=48)}}
    ckpt = tmp_path / "states-10.ckpt"
    torch.save(saved, ckpt)
    theirs = expert_module.distiller_local(str(ckpt)).eval()
    _state_matches(theirs.model.model, saved["Distiller"])  # s3prl loads this one strictly, too
    batch = wavs(1.0)
    with torch.no_grad():
        hs = theirs(batch)["hidden_states"]  # projected CNN output, each layer, then each head
        ours = student(batch[0][None])
        upstream = UpstreamExpert(str(ckpt))(batch)["hidden_states"]
    assert len(hs) == 1 + 2 + 2
    for a, b, c in zip(hs[:3], ours.hidden_states, upstream):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=0)
    for j in range(2):
        torch.testing.assert_close(hs[3 + j], ours.prediction[:, :, j], atol=1e-4, rtol=0)
