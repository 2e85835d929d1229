"""Shared fixtures: tiny random models built from configs with fixed seeds, seeded audio, and
the official-format golden weights for the two full-size spaces.

Tiny models (128 wide, 4 layers, a 3-block conv front end of 32 channels) keep every test
but the golden ones to a fraction of a second on CPU. The full-size (768-wide) supernet is
built at most once per space per session and shared.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from lighthubert import corpus, formats, probes
from lighthubert.manifest import manifest_frames
from lighthubert.export import save_compact
from lighthubert.model import HuBERT, ModelConfig
from lighthubert.space import SearchSpace
from lighthubert.supernet import LightHuBERT

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import seeded  # noqa: E402  (tests/golden/seeded.py: plain torch, shared with make_golden.py)

TINY_CONV = [[32, 10, 5], [32, 3, 2], [32, 2, 2]]  # stride 20, receptive field 30 samples


def tiny_model_config(head_dim: int = 32, extractor_mode: str = "layer_norm", depth: int = 4) -> ModelConfig:
    """128-wide, `depth`-layer supernet shape: FFN 512 = 4 blocks of 128, 4 pos-conv groups."""
    heads = 128 // head_dim
    return ModelConfig(conv_layers=TINY_CONV, extractor_mode=extractor_mode, embed_dim=128, heads=[heads] * depth,
                       ffn_dim=[512] * depth, head_dim=head_dim, conv_pos=16, conv_pos_groups=4, pred_dim=64)


def tiny_search_space(head_dim: int = 32, extractor_mode: str = "layer_norm") -> SearchSpace:
    """Widths 64/96/128, heads up to 128 // head_dim, FFN ratios 2-4, depths 2-4."""
    heads = 128 // head_dim
    return SearchSpace(name="tiny", model=tiny_model_config(head_dim, extractor_mode),
                       embed_dims=(64, 96, 128), heads=tuple(range(max(1, heads - 2), heads + 1)),
                       ffn_ratios=(2.0, 3.0, 4.0), depths=(2, 3, 4))


def tiny_front_end_space(extractor_mode: str = "layer_norm") -> SearchSpace:
    """`tiny_search_space` with an elastic conv front end: 16, 24 or 32 channels per conv layer."""
    return dataclasses.replace(tiny_search_space(extractor_mode=extractor_mode), name="tiny-front-end", conv_dims=(16, 24, 32))


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Replaces the constant inits (LayerNorm 1/0, zero biases) by seeded noise.

    With all-ones scales and zero biases, a wrong slice of a LayerNorm or a bias would go
    unnoticed; after this every parameter entry is distinct.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("bias"):
            p.copy_(0.05 * noise)
        elif p.dim() == 1 and name.endswith("weight"):  # LayerNorm scale
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith("weight_g"):
            p.mul_(1.0 + 0.1 * noise.abs())
    return model


def demo_like_supernet(seed: int = 0) -> LightHuBERT:
    """The demo's space on the tiny front end: 64-dim heads, embed dims 96 / 144 / 192 (not all
    multiples of 64), so subnets are narrower than the supernet's mask_emb and transformers'
    HubertModel cannot hold most of them."""
    cfg = ModelConfig(conv_layers=TINY_CONV, embed_dim=192, heads=[3] * 3, ffn_dim=[768] * 3, head_dim=64, conv_pos=16,
                      conv_pos_groups=16, pred_dim=32, normalize=False)
    torch.manual_seed(seed)
    space = SearchSpace("demo-like", cfg, (96, 144, 192), (1, 2, 3), (2.0, 3.0, 4.0), (2, 3))
    return randomize_(LightHuBERT(space), seed + 1).eval()


@pytest.fixture
def demo_like_search(tmp_path):
    """What `lighthubert search` needs, in seconds: the `demo_like_supernet` as an official
    checkpoint, a 2-layer 32-wide teacher (its head's width) and a manifest of two generated
    utterances. Returns (checkpoint, teacher folder, valid.tsv)."""
    from lighthubert.atomic import save_file
    from lighthubert.audio import synthetic_speech
    from lighthubert.formats.official import checkpoint as official_checkpoint

    save_file(official_checkpoint(demo_like_supernet()), tmp_path / "supernet.pt")
    cfg = ModelConfig(conv_layers=TINY_CONV, embed_dim=32, heads=[1, 1], ffn_dim=[64, 64], head_dim=32, conv_pos=16,
                      conv_pos_groups=16, pred_dim=0, normalize=False)
    torch.manual_seed(0)
    save_compact(HuBERT(cfg).eval(), cfg, tmp_path / "teacher")
    for i in range(2):
        sf.write(tmp_path / f"v{i}.wav", synthetic_speech(0.5, 120.0 + 40 * i, seed=i).numpy(), 16000)
    (tmp_path / "valid.tsv").write_text(f"{tmp_path}\nv0.wav\t8000\nv1.wav\t8000\n")
    return tmp_path / "supernet.pt", tmp_path / "teacher", tmp_path / "valid.tsv"


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return tiny_search_space()


@pytest.fixture
def make_tiny_supernet() -> Callable[..., LightHuBERT]:
    """`make(head_dim=32, extractor_mode="layer_norm", seed=0)` -> a tiny LightHuBERT in eval mode."""

    def make(head_dim: int = 32, extractor_mode: str = "layer_norm", seed: int = 0) -> LightHuBERT:
        torch.manual_seed(seed)
        return randomize_(LightHuBERT(tiny_search_space(head_dim, extractor_mode)), seed + 1).eval()

    return make


@pytest.fixture
def tiny_supernet(make_tiny_supernet) -> LightHuBERT:
    return make_tiny_supernet()


@pytest.fixture
def make_front_end_supernet() -> Callable[..., LightHuBERT]:
    """`make(extractor_mode="layer_norm", seed=0)` -> a tiny LightHuBERT over `tiny_front_end_space`, in eval mode."""

    def make(extractor_mode: str = "layer_norm", seed: int = 0) -> LightHuBERT:
        torch.manual_seed(seed)
        return randomize_(LightHuBERT(tiny_front_end_space(extractor_mode)), seed + 1).eval()

    return make


@pytest.fixture
def feature_computes(monkeypatch) -> list[int]:
    """The number of files of each `probes.FrozenFeatures.compute` call (one upstream forward
    pass over them): what shows that features are computed once and shared."""
    computed: list[int] = []
    real = probes.FrozenFeatures.compute.__func__

    def counting(cls, source, paths, *args, **kwargs):
        computed.append(len(paths))
        return real(cls, source, paths, *args, **kwargs)

    monkeypatch.setattr(probes.FrozenFeatures, "compute", classmethod(counting))
    return computed


def _make_wav(samples: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """(batch, samples) seeded noise, normalised per utterance as the model expects."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, samples, generator=g)
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


@pytest.fixture(scope="session")
def make_wav() -> Callable[..., torch.Tensor]:
    """`make_wav(samples, seed=0, batch=1)` -> (batch, samples) seeded, normalised audio."""
    return _make_wav


@pytest.fixture
def wav() -> torch.Tensor:
    """(1, 1600): 0.1 s -> 79 frames in the tiny front end."""
    return _make_wav(1600)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """tests/golden/official.npz, made by the official code (see make_golden.py)."""
    with np.load(GOLDEN / "official.npz") as z:
        return {k: z[k] for k in z.files}


_OFFICIAL: dict[str, LightHuBERT] = {}


@pytest.fixture(scope="session")
def official_supernet() -> Callable[[str], LightHuBERT]:
    """`get("base" | "small")` -> the full-size supernet with `seeded.official_state` weights.

    Built once per space per session (about 2 s each): the weights are drawn for the official
    key layout, mapped with `formats.fairseq.to_ours` and loaded strictly. Callers must
    `set_subnet` what they need; the model is shared.
    """

    def get(name: str) -> LightHuBERT:
        if name not in _OFFICIAL:
            torch.manual_seed(0)
            model = LightHuBERT(SearchSpace.named(name)).eval()
            shapes = {k: tuple(v.shape) for k, v in formats.fairseq.from_ours(model.state_dict(), "layer_norm").items()}
            state, dropped = formats.fairseq.to_ours(seeded.official_state(shapes))
            assert dropped == []
            model.load_state_dict(state, strict=True)
            _OFFICIAL[name] = model
        return _OFFICIAL[name]

    return get


# -- real recordings and training fixtures ------------------------------------------------------
SHARED = Path(__file__).resolve().parents[2] / "shared"
FSDD = SHARED / "data" / "fsdd" / "recordings"
LIBRISPEECH = SHARED / "data" / "librispeech-mini"


def require_shared(path: Path) -> Path:
    """`path` under ../shared, or a skip naming it; under CI (`CI=true`) a missing folder fails.

    Real recordings sit beside the checkout in ../shared; a contributor's own clone may not
    have them, and there the real-data tests skip. CI always has them, so there a missing
    folder is a broken set-up, not a reason to pass.
    """
    if path.exists():
        return path
    message = f"{path} not found (the real recordings live in ../shared beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must have them")
    pytest.skip(message)


CONV = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]  # 50 Hz frames
SPACE = {
    "supernet": {"conv_layers": CONV, "embed_dim": 64, "heads": [2] * 4, "ffn_dim": [256] * 4, "head_dim": 32,
                 "conv_pos": 16, "conv_pos_groups": 4},
    "search_space": {"embed_dim": [32, 48, 64], "heads": [1, 2], "ffn_ratio": [2.0, 4.0], "depth": [2, 3, 4]},
    "default": {"embed_dim": 48, "heads": [2, 2, 2, 2], "ffn_dim": [192] * 4},
}
TRAIN = {"target_layers": 2, "lr": 2e-3, "warmup": 0.1, "hold": 0.5, "max_batch_samples": 64000,
         "max_sample_size": 16000, "min_sample_size": 4000, "num_workers": 0, "log_every": 1}


def _teacher_setup(root: Path) -> Path:
    """A random tiny teacher (compact export), the tiny student space and distill.yaml in `root`."""
    torch.manual_seed(0)
    cfg = ModelConfig(conv_layers=CONV, extractor_mode="default", embed_dim=64, heads=[2] * 3, ffn_dim=[128] * 3,
                      head_dim=32, conv_pos=16, conv_pos_groups=4, pred_dim=0, normalize=False)
    save_compact(HuBERT(cfg).eval(), cfg, root / "teacher")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (root / "distill.yaml").write_text(yaml.safe_dump({**TRAIN, "space": str(root / "space.yaml")}))
    return root


@pytest.fixture(scope="session")
def train_setup(tmp_path_factory) -> Path:
    """The tiny teacher and space, and train / valid / test manifests of the package's generated
    corpus (10 words x 2 speakers x 6 takes at 16 kHz: 80 train, 20 valid, 20 test files of
    0.4-1 s) with their .ltr / .wrd / .phn labels, so training tests run in any checkout."""
    root = _teacher_setup(tmp_path_factory.mktemp("train"))
    made = corpus.write_corpus(root / "corpus", n_speakers=2, takes=6, seed=0)
    for name in ("train", "valid", "test"):
        for ext in ("tsv", "ltr", "wrd", "phn"):  # the manifests and their label files
            shutil.copy(getattr(made, name).with_suffix("." + ext), root / f"{name}.{ext}")
    return root


@pytest.fixture(scope="session")
def fsdd_setup(tmp_path_factory) -> Path:
    """The tiny teacher and space with manifests of real recordings (FSDD, two speakers)."""
    files = sorted(require_shared(FSDD).glob("*.wav"))
    root = _teacher_setup(tmp_path_factory.mktemp("fsdd"))
    speakers = ("george", "jackson")
    train = [f for f in files if f.stem.split("_")[1] in speakers and int(f.stem.split("_")[2]) >= 5][::3]
    valid = [f for f in files if f.stem.split("_")[1] in speakers and int(f.stem.split("_")[2]) < 2][::4]
    for name, chosen in (("train", train), ("valid", valid)):
        lines = [str(FSDD)] + [f"{f.name}\t{manifest_frames(f)}" for f in chosen]
        (root / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root
