"""Speech recognition with a fine-tuned CTC model (`recipes/ctc.py`): transcription and scoring.

Greedy CTC decoding (the best token per frame, repeats merged, blanks dropped), as SUPERB's
ASR task scores without a language model. Letters come back as fairseq's `.ltr` tokens, `|`
between words; `transcribe` joins them into words. Error rates are corpus-level, as the
probes compute them (`probes.metrics.error_rate`): CER over the letter tokens (word
boundaries included), WER over words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
from torch import Tensor

from . import transcripts
from .audio import load_audio
from .data import AudioDataset
from .extract import min_samples, model_batches
from .model import BLANK, HuBERTCTC
from .probes.metrics import error_rate, greedy_tokens
from .progress import progress_bar


@torch.inference_mode()
def recognise(model: HuBERTCTC, wavs: Sequence[Tensor], max_batch_samples: int = 16000 * 60) -> list[list[str]]:
    """The greedy token sequence of each (N_i,) 16 kHz waveform, batched as `extract` batches.

    Raises:
        ValueError: `model` has no CTC head, or (an `AudioError`) a waveform is shorter than one frame.
    """
    if not isinstance(model, HuBERTCTC):
        raise ValueError("this model has no CTC head; fine-tune it first (`lighthubert finetune --init MODEL ...`)")
    out: list = [None] * len(wavs)
    for b in model_batches(model, wavs, max_batch_samples):
        for i, tokens in zip(b.indices, greedy_tokens(model(b.wav, b.lengths).prediction, b.frames, model.vocab)):
            out[i] = tokens
    return out


def transcribe(model: HuBERTCTC, paths: Sequence[Union[str, Path]], max_batch_samples: int = 16000 * 60) -> list[str]:
    """The text of each audio file (words in upper case, as the training labels spell them)."""
    wavs = [load_audio(p, min_samples=min_samples(model)) for p in paths]
    return [" ".join(transcripts.words_from_letters(t)) for t in recognise(model, wavs, max_batch_samples)]


def score(model: HuBERTCTC, manifest: Union[str, Path], max_batch_seconds: float = 60.0,
          progress: bool = False) -> dict:
    """CER and WER of `model` on a manifest with its `.ltr` labels beside it.

    Returns:
        {"cer", "wer", "utterances", "examples": the first three (reference, hypothesis) pairs}.

    Raises:
        ValueError: a missing or mismatched label file, an unreadable file, or a reference
            token the model's vocabulary lacks (names the label file and line).
    """
    data = AudioDataset(manifest, labels="ltr")
    vocab = set(model.vocab) - {BLANK}
    for i, row in enumerate(data.labels):
        unknown = sorted(set(row) - vocab)
        if unknown:
            raise ValueError(f"{data.label_source(i)}: character(s) {''.join(unknown)!r} are not in the model's vocabulary "
                             f"({''.join(sorted(vocab))}); it can never output them")
    hyps: list[list[str]] = []
    bar = progress_bar(total=len(data), unit="file", desc="transcribe", disable=not progress)
    for start in range(0, len(data), 64):
        wavs = [load_audio(data.root / p, min_samples=min_samples(model)) for p in data.paths[start : start + 64]]
        hyps += recognise(model, wavs, int(max_batch_seconds * 16000))
        bar.update(len(wavs))
    bar.close()
    refs = data.labels
    return {"cer": error_rate(refs, hyps),
            "wer": error_rate([transcripts.words_from_letters(r) for r in refs], [transcripts.words_from_letters(h) for h in hyps]),
            "utterances": len(refs),
            "examples": [(" ".join(transcripts.words_from_letters(r)), " ".join(transcripts.words_from_letters(h)))
                         for r, h in zip(refs[:3], hyps[:3])]}
