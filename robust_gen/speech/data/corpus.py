"""The embedded offline speech corpus: espeak-ng voices reading generated English sentences.

No usable speech corpus ships in a Python package and the build machines cannot download one, so the
speech recipe's default data is synthesized on first use with the espeak-ng library that the
``espeakng-loader`` package bundles (:mod:`robust_gen.speech.data.espeak`): a set of clearly distinct
voices (different accents, formant variants, pitch and rate) each reads sentences from a seeded,
project-owned generator. The result is cached:

``<root>/corpus.json``           the parameters it was built with (plus facts about it)
``<root>/filelist.txt``          ``<speaker>/<speaker>_0000.wav|text|speaker`` lines (relative paths)
``<root>/<speaker>/*.wav``       22.05 kHz mono PCM16

Building happens in a hidden sibling folder that is renamed into place only when complete, so an
interrupted build never leaves a half corpus. :data:`HELD_OUT_VOICES` are further distinct voices kept
out of the default set, for testing speaker models on unseen speakers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from robust_gen.environment import default_cache_dir
from robust_gen.speech.data.audio import estimate_f0, save_audio
from robust_gen.speech.data.espeak import EspeakSynthesizer, VoiceSpec
from robust_gen.speech.data.filelists import write_filelist

__all__ = [
    "DEFAULT_VOICES",
    "HELD_OUT_VOICES",
    "SAMPLE_RATE",
    "DistinctnessReport",
    "EspeakSynthesizer",
    "VoiceSpec",
    "default_corpus_root",
    "generate_sentences",
    "read_manifest",
    "synthesize_corpus",
    "voice_distinctness",
]

SAMPLE_RATE = 22050
CORPUS_FORMAT_VERSION = 1
SENTENCE_GENERATOR_VERSION = 1  # bump whenever generate_sentences changes its output
FILELIST_NAME = "filelist.txt"
MANIFEST_NAME = "corpus.json"

# Ten training voices: each pairs a different formant variant (the timbre: f1..f4, m1..m4, m7, klatt3)
# with one of six English accents, and pitch/rate settings that spread them further apart.
DEFAULT_VOICES: tuple[VoiceSpec, ...] = (
    VoiceSpec("us_m1", "en-us+m1", rate=165, pitch=48),
    VoiceSpec("gb_m2", "en+m2", rate=185, pitch=40),
    VoiceSpec("rp_m3", "en-gb-x-rp+m3", rate=170, pitch=55),
    VoiceSpec("sc_m4", "en-gb-scotland+m4", rate=160, pitch=45),
    VoiceSpec("ca_m7", "en-029+m7", rate=175, pitch=60),
    VoiceSpec("us_f1", "en-us+f1", rate=170, pitch=50),
    VoiceSpec("gb_f2", "en+f2", rate=180, pitch=45),
    VoiceSpec("ny_f3", "en-us-nyc+f3", rate=160, pitch=55),
    VoiceSpec("rp_f4", "en-gb-x-rp+f4", rate=175, pitch=62),
    VoiceSpec("us_kl", "en-us+klatt3", rate=155, pitch=52),
)
# Four more voices built from variants none of the default voices uses (m6, m8, f5, Annie).
HELD_OUT_VOICES: tuple[VoiceSpec, ...] = (
    VoiceSpec("wm_m6", "en-gb-x-gbcwmd+m6", rate=165, pitch=50),
    VoiceSpec("cl_m8", "en-gb-x-gbclan+m8", rate=180, pitch=45),
    VoiceSpec("us_f5", "en-us+f5", rate=165, pitch=50),
    VoiceSpec("gb_an", "en+Annie", rate=170, pitch=48),
)

PROBE_SENTENCE = "The quick brown fox jumps over the lazy dog, and then it sleeps until seven."

# ---------------------------------------------------------------------------------------------------
# Sentence generator: the project's own word lists and templates (5 to 15 words, some numbers and
# punctuation), deterministic for a given seed and speaker.

_SUBJECTS = (
    "Anna", "Marcus", "the teacher", "my neighbour", "a young farmer", "the old captain", "our driver",
    "the baker", "Professor Lee", "her brother", "the quiet student", "a tired nurse", "the mayor",
    "my grandmother", "the new pilot", "Oliver", "Sofia", "the gardener", "his cousin", "the musician",
)  # fmt: skip
_VERBS = (  # (past tense, base form)
    ("painted", "paint"), ("carried", "carry"), ("found", "find"), ("repaired", "repair"),
    ("borrowed", "borrow"), ("cleaned", "clean"), ("sold", "sell"), ("described", "describe"),
    ("noticed", "notice"), ("ordered", "order"), ("opened", "open"), ("forgot", "forget"),
    ("wrapped", "wrap"), ("measured", "measure"), ("lifted", "lift"), ("hid", "hide"),
)  # fmt: skip
_OBJECTS = (
    "a wooden chair", "the old map", "a heavy suitcase", "the broken clock", "a basket of apples",
    "the green umbrella", "a small boat", "the silver key", "a letter from Paris", "the kitchen window",
    "a pair of boots", "the yellow kite", "a jar of honey", "the red bicycle", "a stack of books",
    "the garden gate",
)  # fmt: skip
_PLACES = (
    "near the river", "in the kitchen", "at the station", "behind the library", "on the bridge",
    "under the stairs", "in the market", "by the lighthouse", "at the edge of town", "in the attic",
    "outside the bakery", "on the hill",
)  # fmt: skip
_TIMES = (
    "On Monday", "Before dinner", "Last winter", "Early this morning", "After the storm",
    "Every Sunday", "Late at night", "Yesterday afternoon",
)  # fmt: skip
_ADJECTIVES = (
    "strange", "beautiful", "expensive", "noisy", "fragile", "famous", "enormous", "ordinary",
    "dusty", "bright",
)  # fmt: skip
_PLURALS = (
    "birds", "boxes", "candles", "coins", "ducks", "lanterns", "shells", "stamps", "trees", "windows",
)  # fmt: skip
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _sentence(rng: random.Random) -> str:
    subject, other = rng.sample(_SUBJECTS, 2)
    past, base = rng.choice(_VERBS)
    thing, place, adjective = rng.choice(_OBJECTS), rng.choice(_PLACES), rng.choice(_ADJECTIVES)
    number, small = rng.randint(2, 99), rng.randint(2, 12)
    templates = (
        f"{_capitalize(subject)} {past} {thing} {place}.",
        f"{rng.choice(_TIMES)}, {subject} {past} {thing}.",
        f"Did {subject} really {base} {thing} {place}?",
        f"{_capitalize(subject)} counted {number} {rng.choice(_PLURALS)} {place}.",
        f"Please bring {thing} to {other} before {small} o'clock.",
        f"Why is {thing} so {adjective}?",
        f"{_capitalize(subject)} said that {thing} was {adjective}, but nobody believed it.",
        f"We waited {number} minutes for {subject}, and then we went home!",
        f"Room {number} is on the {rng.choice(_ORDINALS)} floor, {place}.",
        f"{_capitalize(other)} asked {subject} to {base} {thing}, and {subject} agreed.",
    )
    return rng.choice(templates)


def generate_sentences(count: int, seed: int = 0, stream: str = "") -> list[str]:
    """``count`` varied English sentences of 5 to 15 words, deterministic in (seed, stream).

    Parameters
    ----------
    count : int
        Number of sentences.
    seed : int
        Random seed.
    stream : str
        Extra key (the speaker id in :func:`synthesize_corpus`), so that adding a speaker does not
        change the sentences of the others.

    Examples
    --------
    >>> generate_sentences(2, seed=0) == generate_sentences(2, seed=0)
    True
    >>> all(5 <= len(s.split()) <= 15 for s in generate_sentences(200, seed=1))
    True
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(f"robust_gen-sentences:{seed}:{stream}")
    sentences: list[str] = []
    while len(sentences) < count:
        sentence = _sentence(rng)
        if 5 <= len(sentence.split()) <= 15:
            sentences.append(sentence)
    return sentences


# ---------------------------------------------------------------------------------------------------
# Voice distinctness.


@dataclass(frozen=True)
class VoiceProfile:
    """Summary of one voice speaking the probe sentence."""

    speaker: str
    num_samples: int
    median_f0_hz: float
    mfcc_mean: tuple[float, ...]  # mean MFCC 1..19 (c0, the loudness, left out)


@dataclass(frozen=True)
class VoicePair:
    """How two voices compare on the probe sentence, and why they were flagged (empty: distinct)."""

    speaker_a: str
    speaker_b: str
    identical: bool
    waveform_correlation: float
    mfcc_distance: float
    f0_semitones: float
    reason: str = ""


@dataclass
class DistinctnessReport:
    """Result of :func:`voice_distinctness`: one profile per voice, one entry per pair."""

    profiles: list[VoiceProfile]
    pairs: list[VoicePair]
    flagged: list[VoicePair] = field(default_factory=list)

    def raise_if_flagged(self) -> None:
        """Raise ValueError listing the voice pairs that are not clearly distinct."""
        if self.flagged:
            lines = "; ".join(f"{p.speaker_a} vs {p.speaker_b}: {p.reason}" for p in self.flagged)
            raise ValueError(
                f"voices are not distinct ({lines}). espeak-ng silently speaks the plain voice for some "
                "names; choose other base voices, variants, or pitch/rate settings"
            )


def _profile(speaker: str, wav: torch.Tensor, sample_rate: int) -> VoiceProfile:
    import torchaudio.transforms

    mfcc = torchaudio.transforms.MFCC(
        sample_rate=sample_rate, n_mfcc=20, melkwargs={"n_fft": 1024, "hop_length": 256, "n_mels": 64}
    )(wav)
    return VoiceProfile(
        speaker=speaker,
        num_samples=wav.numel(),
        median_f0_hz=float(estimate_f0(wav, sample_rate).nanmedian()),  # NaN if nothing is voiced
        mfcc_mean=tuple(float(v) for v in mfcc[1:].mean(dim=1)),
    )


def _semitones(f0_a: float, f0_b: float) -> float:
    if np.isnan(f0_a) or np.isnan(f0_b):
        return 0.0 if np.isnan(f0_a) and np.isnan(f0_b) else float("inf")
    return float(12 * abs(np.log2(f0_a / f0_b)))


def voice_distinctness(
    voices: tuple[VoiceSpec, ...] | list[VoiceSpec],
    *,
    sentence: str = PROBE_SENTENCE,
    synthesizer: EspeakSynthesizer | None = None,
    max_correlation: float = 0.95,
    min_mfcc_distance: float = 3.0,
    min_f0_semitones: float = 1.0,
) -> DistinctnessReport:
    """Synthesize one sentence with every voice and flag pairs that are not clearly different.

    A pair is flagged when its waveforms are identical, when they are nearly so (normalized correlation
    of the common prefix above ``max_correlation``), or when both its mean-MFCC distance is below
    ``min_mfcc_distance`` and its median-F0 difference is below ``min_f0_semitones``.
    The thresholds come from measuring the bundled voices: a variant that espeak-ng silently replaces
    by the plain voice gives identical audio; the same voice with pitch or rate nudged by a few units
    stays below MFCC distance 1.5 and 0.6 semitone (flagged); the same variant in another accent sits
    at MFCC distance 4-7 (kept); the default and held-out voices are at least 10.8 apart.

    Examples
    --------
    >>> plain, typo = VoiceSpec("plain", "en"), VoiceSpec("same", "en", rate=175)
    >>> voice_distinctness([plain, typo]).flagged[0].reason
    'identical audio'
    >>> voice_distinctness(DEFAULT_VOICES[:3]).flagged
    []
    """
    synthesizer = synthesizer or EspeakSynthesizer.shared()
    speakers = [voice.speaker for voice in voices]
    if len(set(speakers)) != len(speakers):
        raise ValueError(f"speaker ids must be unique, got {speakers}")
    waves = {v.speaker: synthesizer.synthesize(sentence, v) for v in voices}
    profiles = {
        name: _profile(name, torch.from_numpy(wav.astype(np.float32) / 32768.0), synthesizer.sample_rate)
        for name, wav in waves.items()
    }
    pairs, flagged = [], []
    for a, b in combinations(speakers, 2):
        wa, wb = waves[a], waves[b]
        identical = wa.shape == wb.shape and np.array_equal(wa, wb)
        n = min(len(wa), len(wb))
        xa, xb = wa[:n].astype(np.float64), wb[:n].astype(np.float64)
        denominator = np.sqrt((xa * xa).sum() * (xb * xb).sum())
        correlation = float((xa * xb).sum() / denominator) if denominator > 0 else 1.0
        distance = float(np.linalg.norm(np.subtract(profiles[a].mfcc_mean, profiles[b].mfcc_mean)))
        semitones = _semitones(profiles[a].median_f0_hz, profiles[b].median_f0_hz)
        if identical:
            reason = "identical audio"
        elif correlation > max_correlation:
            reason = f"near-identical audio (correlation {correlation:.3f})"
        elif distance < min_mfcc_distance and semitones < min_f0_semitones:
            reason = f"similar spectra (MFCC distance {distance:.1f}) and F0 ({semitones:.2f} semitones)"
        else:
            reason = ""
        pair = VoicePair(a, b, identical, correlation, distance, semitones, reason)
        pairs.append(pair)
        if reason:
            flagged.append(pair)
    return DistinctnessReport([profiles[s] for s in speakers], pairs, flagged)


# ---------------------------------------------------------------------------------------------------
# Building and caching the corpus.


def corpus_parameters(voices, utterances_per_voice: int, seed: int) -> dict:
    """Everything that determines the corpus content; ``corpus.json`` must match it for a cache hit.

    Examples
    --------
    >>> corpus_parameters(DEFAULT_VOICES[:1], 2, 0)["voices"][0]["voice"]
    'en-us+m1'
    """
    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "sentence_generator_version": SENTENCE_GENERATOR_VERSION,
        "espeakng_loader_version": metadata.version("espeakng-loader"),
        "sample_rate": SAMPLE_RATE,
        "voices": [asdict(v) for v in voices],
        "utterances_per_voice": utterances_per_voice,
        "seed": seed,
    }


def default_corpus_root(voices=DEFAULT_VOICES, utterances_per_voice: int = 40, seed: int = 0) -> Path:
    """Cache location of a corpus: one folder per parameter set, named by a digest of the parameters.

    Examples
    --------
    >>> default_corpus_root().parent.name
    'corpus'
    >>> default_corpus_root(seed=1) != default_corpus_root(seed=0)
    True
    """
    parameters = corpus_parameters(voices, utterances_per_voice, seed)
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    return default_cache_dir() / "corpus" / f"espeak-{digest}"


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The ``corpus.json`` of a corpus folder, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(root: Path, parameters: dict) -> bool:
    manifest = read_manifest(root)
    return (
        manifest is not None
        and manifest.get("parameters") == parameters
        and (root / manifest.get("filelist", FILELIST_NAME)).is_file()
    )


def _remove_stale_builds(root: Path) -> None:
    """Delete build (and replaced-corpus) folders of ``root`` left by processes that no longer run."""
    leftovers = [*root.parent.glob(f".{root.name}.building-*"), *root.parent.glob(f".{root.name}.outdated-*")]
    for folder in leftovers:
        try:
            pid = int(folder.name.rsplit("-", 2)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _build(folder: Path, voices, utterances_per_voice: int, seed: int, synthesizer) -> dict:
    """Synthesize every utterance into ``folder``; return the manifest (written last by the caller)."""
    records, total_samples = [], 0
    for voice in voices:
        (folder / voice.speaker).mkdir()
        for index, text in enumerate(generate_sentences(utterances_per_voice, seed, voice.speaker)):
            samples = synthesizer.synthesize(text, voice)
            if synthesizer.sample_rate != SAMPLE_RATE:  # only for other builds of the library
                import torchaudio.functional

                wav = torch.from_numpy(samples.astype(np.float32) / 32768.0)
                samples = torchaudio.functional.resample(wav, synthesizer.sample_rate, SAMPLE_RATE)
            path = folder / voice.speaker / f"{voice.speaker}_{index:04d}.wav"
            save_audio(path, samples, SAMPLE_RATE)
            total_samples += len(samples)
            records.append({"path": str(path), "text": text, "speaker": voice.speaker})
    write_filelist(records, folder / FILELIST_NAME)
    return {
        "filelist": FILELIST_NAME,
        "num_utterances": len(records),
        "total_seconds": round(total_samples / SAMPLE_RATE, 2),
        "espeak_ng_version": synthesizer.version,
    }


def synthesize_corpus(
    root: str | os.PathLike | None = None,
    *,
    voices: tuple[VoiceSpec, ...] | list[VoiceSpec] = DEFAULT_VOICES,
    utterances_per_voice: int = 40,
    seed: int = 0,
    check_voices: bool = True,
    synthesizer: EspeakSynthesizer | None = None,
) -> Path:
    """Build (or find in the cache) a synthetic multi-speaker corpus; return its filelist path.

    Parameters
    ----------
    root : str or PathLike, optional
        Corpus folder. Default: :func:`default_corpus_root` of the parameters, under the cache folder.
        A folder holding a corpus with other parameters is rebuilt; a non-empty folder that is not a
        corpus is refused.
    voices : sequence of VoiceSpec
        Speakers; :data:`DEFAULT_VOICES` by default (:data:`HELD_OUT_VOICES` for unseen speakers).
    utterances_per_voice : int
        Sentences read by each voice.
    seed : int
        Seed of the sentence generator.
    check_voices : bool
        Run :func:`voice_distinctness` first and raise ValueError if two voices are not distinct.
    synthesizer : EspeakSynthesizer, optional
        Defaults to the shared one.

    Returns
    -------
    pathlib.Path
        ``<root>/filelist.txt`` with ``<speaker>/<file>.wav|text|speaker`` lines.

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.data.filelists import read_filelist
    >>> root = f"{tempfile.mkdtemp()}/tiny"
    >>> filelist = synthesize_corpus(root, voices=DEFAULT_VOICES[:2], utterances_per_voice=2)
    >>> records = read_filelist(filelist)
    >>> len(records), sorted({r["speaker"] for r in records})
    (4, ['gb_m2', 'us_m1'])
    >>> synthesize_corpus(root, voices=DEFAULT_VOICES[:2], utterances_per_voice=2) == filelist  # cached
    True
    """
    voices = tuple(voices)
    if not voices:
        raise ValueError("voices must name at least one VoiceSpec")
    if not isinstance(utterances_per_voice, int) or utterances_per_voice < 1:
        raise ValueError(f"utterances_per_voice must be a positive integer, got {utterances_per_voice!r}")
    speakers = [v.speaker for v in voices]
    if len(set(speakers)) != len(speakers):
        raise ValueError(f"speaker ids must be unique, got {speakers}")
    parameters = corpus_parameters(voices, utterances_per_voice, seed)
    root = Path(root) if root is not None else default_corpus_root(voices, utterances_per_voice, seed)
    if _is_current(root, parameters):
        return root / FILELIST_NAME
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and read_manifest(root) is None)):
        raise ValueError(
            f"{root} exists and is not a corpus folder (no {MANIFEST_NAME}); pass an empty or new folder"
        )
    synthesizer = synthesizer or EspeakSynthesizer.shared()
    if check_voices:
        voice_distinctness(voices, synthesizer=synthesizer).raise_if_flagged()
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    building = root.parent / f".{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        started = time.perf_counter()
        facts = _build(building, voices, utterances_per_voice, seed, synthesizer)
        facts["build_seconds"] = round(time.perf_counter() - started, 2)
        manifest = {"parameters": parameters, **facts}
        (building / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(building, root, parameters)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root / FILELIST_NAME


def _move_into_place(building: Path, root: Path, parameters: dict) -> None:
    """Rename the finished build to ``root``, replacing an outdated corpus there."""
    try:
        building.rename(root)  # atomic; fails if root is a non-empty folder
        return
    except OSError:
        if _is_current(root, parameters):  # another process finished the same corpus first
            return
    outdated = root.parent / f".{root.name}.outdated-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    root.rename(outdated)
    building.rename(root)
    shutil.rmtree(outdated, ignore_errors=True)
