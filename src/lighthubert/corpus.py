"""A small built-in speech-like corpus with word and speaker labels, generated on the spot.

`lighthubert demo` needs labelled audio when the user has none: a tiny teacher is pre-trained
on it, distilled, and probed for words and speakers on frozen features. Nothing is downloaded;
a cut-down cascade formant synthesiser (Klatt, 1980, JASA 67(3)) makes every file from
`(seed, word, speaker, take)`, so the same seed gives bit-identical files.

Voicing is a jittered, shimmering pulse train through a glottal low-pass, then four
cascaded formant resonators; fricatives and plosive bursts are band-passed noise; aspiration
is noise through the formants. Phone targets glide into each other (coarticulation).
Speakers differ in pitch, vocal-tract length, rate, spectral tilt, breathiness, microphone
and per-phone formant offsets (an accent); takes differ in durations, pitch contour,
formants and their undershoot, loudness and background noise. The variability is tuned so
that neither label is trivial: mean-pooled MFCCs (the `probes` baseline) score about
0.8-0.9 on both, leaving a learned representation room to do better. Files are laid out and
named as in the Free Spoken Digit Dataset (`seven_ada_3.wav`), so its label regexes work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import soundfile as sf
from scipy.ndimage import convolve1d
from scipy.signal import butter, lfilter, sosfilt

from . import transcripts
from .audio import SAMPLE_RATE
from .progress import progress_bar

FORMAT_VERSION = 1  # bump when the synthesis changes, so cached corpora are regenerated
_HOP = 80  # samples per parameter frame (5 ms)
_F4 = 3500.0  # fourth formant of an average (tract 1.0) voice, Hz
_VOICE_GAIN = 30.0  # puts vowels about 10 dB above /s/, as in speech
_NEUTRAL = np.array([500.0, 1500.0, 2500.0])  # F1-F3 of a uniform tube (schwa), Hz
_BANDWIDTHS = np.array([60.0, 90.0, 150.0, 200.0])  # formant bandwidths, Hz
_NAMES = ("ada", "ben", "cal", "dee", "eli", "fay", "gus", "hana", "ivo", "jun", "kai", "lea", "max",
          "nia", "otto", "pia", "quin", "rex", "sam", "tia", "ugo", "vera", "wes", "xia", "yan", "zoe")


class _Segment(NamedTuple):
    """One steady target of the synthesiser; a phone is one to three, smoothed into their neighbours."""

    ms: float  # nominal duration at rate 1.0
    formants: tuple[float, float, float]  # F1-F3 targets for an average voice, Hz
    voice: float = 0.0  # glottal source amplitude
    aspiration: float = 0.0  # noise through the formants: plosive release, /h/-like
    channel: str = ""  # frication noise band, a key of _CHANNELS; bypasses the formants
    noise: float = 0.0  # its amplitude
    damping: float = 1.0  # multiplies the F2-F4 bandwidths: a nasal murmur keeps only F1


# Frication bands (low Hz, high Hz, gain) for an average voice; they scale with the tract.
_CHANNELS = {"s": (3800.0, 7500.0, 0.12), "f": (1200.0, 7500.0, 0.08), "t": (2800.0, 7000.0, 0.5), "k": (1500.0, 3300.0, 0.5)}
_ALVEOLAR, _VELAR, _LABIAL, _DENTAL = (300, 1700, 2600), (300, 1900, 2300), (300, 1000, 2300), (300, 1400, 2600)


def _vowel(f1: float, f2: float, f3: float, ms: float) -> tuple[_Segment, ...]:
    return (_Segment(ms, (f1, f2, f3), voice=1.0),)


def _plosive(locus: tuple[float, float, float], channel: str) -> tuple[_Segment, ...]:
    """Closure (silence), a 10 ms burst, then aspiration while the formants move to the vowel."""
    return _Segment(55, locus), _Segment(10, locus, channel=channel, noise=1.0), _Segment(40, locus, aspiration=0.4)


# Vowel formants are Peterson & Barney's (1952) men's averages; consonants use place loci.
_PHONES = {
    "i": _vowel(270, 2290, 3010, 130), "I": _vowel(390, 1990, 2550, 100), "e": _vowel(530, 1840, 2480, 110),
    "a": _vowel(730, 1090, 2440, 140), "^": _vowel(640, 1190, 2390, 100), "o": _vowel(570, 840, 2410, 150),
    "u": _vowel(300, 870, 2240, 160),
    "r": (_Segment(70, (310, 1060, 1380), voice=0.7),), "w": (_Segment(70, (290, 610, 2150), voice=0.7),),
    "n": (_Segment(80, (250, 1700, 2600), voice=0.5, damping=3.0),),
    "s": (_Segment(110, _ALVEOLAR, channel="s", noise=1.0),), "z": (_Segment(90, _ALVEOLAR, voice=0.3, channel="s", noise=0.7),),
    "f": (_Segment(100, _LABIAL, channel="f", noise=1.0),), "v": (_Segment(70, _LABIAL, voice=0.4, channel="f", noise=0.6),),
    "th": (_Segment(100, _DENTAL, channel="f", noise=0.8),),
    "t": _plosive(_ALVEOLAR, "t"), "k": _plosive(_VELAR, "k"),
}
_PHONE_IDS = {p: i for i, p in enumerate(_PHONES)}
# Digit-like words; several share phones (/ai/ in five and nine, /s/ in six and seven, /f/, /r i/).
_WORD_PHONES = {"zero": "z I r o", "one": "w ^ n", "two": "t u", "three": "th r i", "four": "f o r",
                "five": "f a i v", "six": "s I k s", "seven": "s e v ^ n", "eight": "e i t", "nine": "n a i n"}
WORDS: tuple[str, ...] = tuple(_WORD_PHONES)


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: what every take of every word by it shares."""

    name: str  # lowercase letters only, so FSDD-style label regexes find it
    f0: float  # mean pitch, Hz
    tract: float  # multiplies every formant and noise band: > 1 is a shorter vocal tract
    rate: float  # speaking rate: phone durations are divided by it
    tilt: float  # pole of the glottal double low-pass in (0, 1): higher is a darker voice
    breath: float  # aspiration noise mixed into voicing, relative to it
    mic: float  # first-order tilt of this speaker's recording channel: > 0 brighter, < 0 duller
    accent: int  # seeds this voice's fixed per-phone formant offsets (9% standard deviation)


def speakers(n: int = 6, seed: int = 0) -> list[Speaker]:
    """`n` voices alternating between low (95-150 Hz) and high (165-240 Hz) pitch.

    Within each group, pitch positions follow the golden-ratio sequence from a seeded start, so
    any `n` spreads them evenly and a larger `n` adds voices without changing the first ones; the
    tract factor rises with pitch (higher voices, shorter tracts), with some overlap.

    Raises:
        ValueError: `n` outside 2..26 or a negative seed.
    """
    if not 2 <= n <= len(_NAMES):
        raise ValueError(f"n_speakers must be in 2..{len(_NAMES)} (one name per letter), got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    start = np.random.default_rng([seed, 7919]).random()  # 7919 keeps these streams apart from synthesize's
    voices = []
    for i, name in enumerate(_NAMES[:n]):
        rng = np.random.default_rng([seed, 7919, i])
        q = (start + 0.618034 * (i // 2) + 0.05 * rng.random()) % 1  # position in the group's range
        low, high, base = (165.0, 240.0, 1.0) if i % 2 else (95.0, 150.0, 0.86)
        tract = np.clip(base + 0.17 * q + rng.normal(0, 0.03), 0.85, 1.2)
        voices.append(Speaker(name, f0=round(low * (high / low) ** q, 1), tract=round(tract, 3),
                              rate=round(rng.uniform(0.85, 1.15), 3), tilt=round(rng.uniform(0.85, 0.97), 3),
                              breath=round(rng.uniform(0.02, 0.2), 3), mic=round(rng.uniform(-0.4, 0.6), 3),
                              accent=int(rng.integers(2**31))))
    return voices


def synthesize(word: str, speaker: Speaker, take: int, seed: int = 0) -> np.ndarray:
    """One take of `word` by `speaker`, drawn from `(seed, word, speaker.accent, take)` alone.

    Returns:
        (N,) float32 at 16 kHz, about 0.4-1.0 s, peak at most 0.9.

    Raises:
        ValueError: an unknown word, or a negative take or seed.
    """
    if word not in _WORD_PHONES:
        raise ValueError(f"unknown word {word!r}; expected one of {', '.join(WORDS)}")
    if take < 0 or seed < 0:
        raise ValueError(f"take and seed must be >= 0, got take {take}, seed {seed}")
    rng = np.random.default_rng([seed, WORDS.index(word), speaker.accent, take])
    track, lead, tail = _track(word, speaker, rng)
    n_frames, n = len(track), len(track) * _HOP
    centres, samples = (np.arange(n_frames) + 0.5) * _HOP, np.arange(n)

    def per_sample(column: np.ndarray) -> np.ndarray:  # (frames,) -> (N,), linearly interpolated
        return np.interp(samples, centres, column)

    # Pitch: the take's register, declination and a slow wander.
    smooth = np.hanning(40)  # 200 ms
    wander = convolve1d(rng.normal(0, 0.1, n_frames), smooth / smooth.sum(), mode="nearest")
    f0 = per_sample(speaker.f0 * np.exp(rng.normal(0, 0.06) + wander) * np.linspace(1.1, 0.88, n_frames))
    voice = per_sample(track[:, 4])
    breath = per_sample(track[:, 5]) + speaker.breath * voice
    speech = _glottal_pulses(f0, speaker.tilt, rng) * voice + 0.1 * breath * rng.standard_normal(n)
    tract = speaker.tract * np.exp(rng.normal(0, 0.01))
    freqs = np.column_stack([track[:, :3], np.full(n_frames, _F4)]) * tract
    widths = _BANDWIDTHS * np.column_stack([np.full(n_frames, 1 + 2 * speaker.breath), np.repeat(track[:, 3:4], 3, axis=1)])
    for k in range(4):  # the cascade, F1 first
        speech = _resonate(speech, per_sample(freqs[:, k]), per_sample(widths[:, k]))
    speech = _VOICE_GAIN * np.diff(speech, prepend=0.0)  # lip radiation: +6 dB/octave
    for c, (low, high, gain) in enumerate(_CHANNELS.values()):
        if track[:, 6 + c].any():
            band = butter(2, [low * tract, min(high * tract, 7800.0)], "bandpass", fs=SAMPLE_RATE, output="sos")
            speech += gain * sosfilt(band, rng.standard_normal(n)) * per_sample(track[:, 6 + c])
    active = slice(lead * _HOP, n - tail * _HOP)
    hiss = lfilter([1], [1, -0.7], rng.standard_normal(n))  # room noise, 25-35 dB below the speech
    speech += hiss * np.std(speech[active]) / np.std(hiss) * 10 ** (-rng.uniform(25, 35) / 20)
    speech = lfilter([1, -speaker.mic - rng.normal(0, 0.05)], [1], speech)  # the speaker's microphone
    speech *= 0.1 / np.sqrt(np.mean(speech[active] ** 2)) * 10 ** (rng.uniform(-6, 6) / 20)
    return (speech * min(1.0, 0.9 / np.abs(speech).max())).astype(np.float32)


def _track(word: str, speaker: Speaker, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Synthesis targets per 5 ms frame, glided into each other, with silence before and after.

    Returns:
        The (frames, 6 + channels) track: F1-F3 in Hz before tract scaling, the F2-F4 bandwidth
        factor, voice, aspiration, then one noise amplitude per `_CHANNELS` entry; and the
        numbers of silent frames at the start and at the end.
    """
    slack = rng.uniform(0, 0.25)  # a careless take moves every target toward the neutral tract
    rows, frames = [], []
    for phone in _WORD_PHONES[word].split():
        accent = np.random.default_rng([speaker.accent, _PHONE_IDS[phone]]).normal(0, 0.09, 3)
        stretch = rng.uniform(0.8, 1.2) / speaker.rate
        for s in _PHONES[phone]:
            level = 10 ** (rng.normal(0, 2) / 20)
            formants = (np.array(s.formants) + slack * (_NEUTRAL - s.formants)) * (1 + accent) * (1 + rng.normal(0, 0.05, 3))
            noise = [s.noise * level * (c == s.channel) for c in _CHANNELS]
            rows.append([*formants, s.damping, s.voice * level, s.aspiration * level, *noise])
            frames.append(max(1, round(s.ms * stretch * SAMPLE_RATE / 1000 / _HOP)))
    lead, tail = (int(k) for k in rng.integers(10, 41, size=2))  # 50-200 ms
    track = np.pad(np.repeat(np.array(rows), frames, axis=0), ((lead, tail), (0, 0)), mode="edge")
    track[:lead, 4:] = track[len(track) - tail :, 4:] = 0
    glide = np.hanning(rng.integers(9, 15))  # coarticulation: formants glide over 40-70 ms
    track[:, :4] = convolve1d(track[:, :4], glide / glide.sum(), axis=0, mode="nearest")
    track[:, 4:] = convolve1d(track[:, 4:], np.hanning(5) / 2, axis=0, mode="nearest")  # 15 ms ramps
    return track, lead, tail


def _glottal_pulses(f0: np.ndarray, tilt: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) pitch in Hz -> (N,) voicing: a pulse per period with 1% jitter and 8% shimmer, through
    a double low-pass with pole `tilt`, scaled to unit energy per pulse so tilt changes timbre only.
    """
    n = len(f0)
    pulses = np.flatnonzero(np.diff(np.floor(np.cumsum(f0 / SAMPLE_RATE)), prepend=0) > 0)
    pulses = np.clip(pulses + np.round(rng.normal(0, 0.01, len(pulses)) * SAMPLE_RATE / f0[pulses]).astype(int), 0, n - 1)
    source = np.zeros(n)
    np.add.at(source, pulses, 1 + 0.08 * rng.standard_normal(len(pulses)))
    return lfilter([np.sqrt((1 - tilt**2) ** 3 / (1 + tilt**2))], [1, -2 * tilt, tilt**2], source)


def _resonate(x: np.ndarray, freq: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(N,) -> (N,): a two-pole resonator, unity gain at DC, whose frequency and bandwidth (Hz,
    per sample) glide.

    A direct-form biquad whose coefficients change every frame clicks: its state holds past
    outputs, and the jump in coefficients injects an impulse that buried F2 and F3 under
    20 dB of broadband transients. Here the state is a complex one-pole z[n] = p[n] z[n-1] + x[n]
    (the coupled form), which a new p only turns; the two-pole output is
    |1 - p|^2 Im(p z) / Im(p). Solved in blocks of _HOP samples, each in closed form
    (z = P cumsum(x / P), P the running product of p), then chained by their end states.
    """
    p = np.exp((2j * np.pi * freq - np.pi * width) / SAMPLE_RATE)
    prod = np.cumprod(p.reshape(-1, _HOP), axis=1)
    z = prod * np.cumsum(x.reshape(-1, _HOP) / prod, axis=1)  # each block from a zero state
    carry, state = np.empty(len(z), dtype=complex), 0j
    for b, (end, decay) in enumerate(zip(z[:, -1].tolist(), prod[:, -1].tolist())):
        carry[b] = state
        state = end + decay * state
    z = (z + prod * carry[:, None]).ravel()
    return np.abs(1 - p) ** 2 * (p * z).imag / p.imag


@dataclass
class Corpus:
    """Where `write_corpus` put things: the folder and its three fairseq manifests."""

    root: Path  # out_dir; the audio is in root / "audio"
    train: Path
    valid: Path
    test: Path


def write_corpus(out_dir: Union[str, Path], n_speakers: int = 6, takes: int = 20, seed: int = 0,
                 progress: bool = False) -> Corpus:
    """Writes every take of every word by every speaker, or reuses a complete earlier run.

    Files are `out_dir/audio/{word}_{speaker}_{take}.wav` (16 kHz PCM_16). Each manifest gets
    label files beside it, line for line (see `transcripts`): `.wrd` (the word, upper case),
    `.ltr` (its letters) and `.phn` (the phones the synthesiser spoke, `_WORD_PHONES`). The split is by take,
    as FSDD's: takes below `max(1, takes // 5)` are test, the next `max(1, takes // 10)` valid,
    the rest train, so every (word, speaker) pair is in every split. `corpus.json`, written
    last, records the parameters; when it matches and every file is there, nothing is written.

    Raises:
        ValueError: `n_speakers` outside 2..26, `takes` below 3 or a negative seed.
    """
    if takes < 3:
        raise ValueError(f"takes must be >= 3 so that train, valid and test each get one, got {takes}")
    voices = speakers(n_speakers, seed)
    root = Path(out_dir).resolve()
    audio, stamp = root / "audio", root / "corpus.json"
    corpus = Corpus(root, root / "train.tsv", root / "valid.tsv", root / "test.tsv")
    params = {"version": FORMAT_VERSION, "n_speakers": n_speakers, "takes": takes, "seed": seed}
    jobs = [(w, s, k, f"{w}_{s.name}_{k}.wav") for w in WORDS for s in voices for k in range(takes)]
    manifests = corpus.train, corpus.valid, corpus.test
    labels = [transcripts.label_path(m, k) for m in manifests for k in transcripts.LABEL_KINDS]
    if _read_json(stamp) == params and all(p.is_file() for p in [*manifests, *labels, *(audio / j[3] for j in jobs)]):
        return corpus
    if stamp.is_file():  # our own corpus with other parameters: drop the files this one will not overwrite
        stamp.unlink()
        names = {j[3] for j in jobs}
        for old in audio.glob("*.wav"):
            if old.name not in names:
                old.unlink()
    audio.mkdir(parents=True, exist_ok=True)
    n_test, n_valid = max(1, takes // 5), max(1, takes // 10)
    lines: dict[str, list[str]] = {"train": [str(audio)], "valid": [str(audio)], "test": [str(audio)]}
    words: dict[str, list[str]] = {split: [] for split in lines}
    for word, voice, take, name in progress_bar(jobs, desc="corpus", unit="file", disable=not progress):
        wav = synthesize(word, voice, take, seed)
        sf.write(audio / name, wav, SAMPLE_RATE, subtype="PCM_16")
        split = "test" if take < n_test else "valid" if take < n_test + n_valid else "train"
        lines[split].append(f"{name}\t{len(wav)}")
        words[split].append(word)
    for path, split in zip(manifests, lines):
        path.write_text("\n".join(lines[split]) + "\n")
        labels = {"wrd": [w.upper() for w in words[split]], "ltr": [transcripts.letters(w.upper()) for w in words[split]],
                  "phn": [_WORD_PHONES[w] for w in words[split]]}
        for kind, rows in labels.items():
            transcripts.label_path(path, kind).write_text("".join(row + "\n" for row in rows))
    stamp.write_text(json.dumps(params) + "\n")
    return corpus


def _read_json(path: Path) -> object:
    """The parsed file, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
