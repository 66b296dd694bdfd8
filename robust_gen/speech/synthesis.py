"""Text -> mel -> waveform with a trained Grad-TTS, and the sample folders a training run writes.

* :func:`load_trained` rebuilds a :class:`~robust_gen.speech.gradtts.model.GradTTS` from a run folder or checkpoint:
  the checkpoint carries the resolved config (model sizes, mel and text settings, the speaker ids), and its EMA
  weights are used by default.
* :class:`Synthesizer` turns texts and speaker names into mels (reverse diffusion from ``mu + z / temperature``
  with the core's Euler ODE or SDE sampler) and waveforms (any vocoder of :mod:`robust_gen.speech.vocoder`).
* :func:`write_samples` writes ``<speaker>_<i>.wav``, a mel plot ``<speaker>_<i>.png`` per utterance and
  ``samples.jsonl`` (one JSON object per utterance: ``text``, ``speaker``, ``path`` (the wav, relative to the
  folder of ``samples.jsonl``), ``png``, ``frames``, ``seconds``, the level ``rms_dbfs`` and ``peak_dbfs``,
  and with a training mel range ``mel_out_of_range``: how many mel values lay outside it and were clamped
  before vocoding, with a warning), the input of the speaker-similarity tool.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robust_gen.speech.data.audio import peak_db, rms_db, save_audio
from robust_gen.speech.data.mel import MelConfig
from robust_gen.speech.gradtts.model import GradTTS
from robust_gen.speech.mel_range import MelRange
from robust_gen.speech.text import text_to_ids
from robust_gen.training.run_dir import atomic_write_text, save_figure

log = logging.getLogger(__name__)

__all__ = ["Synthesizer", "TrainedModel", "load_trained", "plot_mel", "read_text_list", "write_samples"]


@dataclass
class TrainedModel:
    """A Grad-TTS rebuilt from a checkpoint, with what synthesis needs to know about its training."""

    model: GradTTS
    speakers: dict[str, int]
    mel_config: MelConfig
    add_blank: bool
    cleaner: str
    step: int
    config: Any
    mel_range: MelRange | None = None  # the training mels' per-band range (None: a run from before it was kept)


def load_trained(path: str | os.PathLike, *, use_ema: bool = True, device: str = "cpu") -> TrainedModel:
    """Rebuild the model of a run folder (its newest valid checkpoint) or of one ``checkpoints/step_*`` folder.

    The checkpoint's ``config.yaml`` gives the model sizes, mel and text settings and the speaker ids; the EMA
    weights are used unless ``use_ema=False``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from robust_gen.diffusion.ema import averaged_weights
    from robust_gen.training.checkpoint import resolve_checkpoint
    from robust_gen.training.recipe import check_targets

    group = "ema" if use_ema else "model"
    checkpoint = resolve_checkpoint(path)
    folder, weights = checkpoint.path, checkpoint.tensors[group]
    config_yaml, step = checkpoint.config_yaml, checkpoint.step
    cfg = OmegaConf.create(config_yaml) if config_yaml else None
    if cfg is None or "speaker_ids" not in cfg:
        raise ValueError(
            f"checkpoint {folder} carries no tts config with speaker_ids; the tts recipe did not write it"
        )
    check_targets(cfg, source=f"{folder}/config.yaml")  # a config from disk is data: known classes only
    speakers = {str(k): int(v) for k, v in OmegaConf.to_container(cfg.speaker_ids).items()}
    model = instantiate(cfg.model, n_speakers=len(speakers))
    if use_ema:
        weights = averaged_weights(weights)
    # the checkpoint holds the training task, whose Grad-TTS is its "model." submodule
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")})
    model.to(device).eval()
    return TrainedModel(
        model=model,
        speakers=speakers,
        mel_config=MelConfig(**OmegaConf.to_container(cfg.mel)),
        add_blank=bool(cfg.text.add_blank),
        cleaner=str(cfg.text.cleaner),
        step=step,
        config=cfg,
        mel_range=MelRange.from_config(OmegaConf.to_container(cfg.mel_range) if "mel_range" in cfg else None),
    )


class Synthesizer:
    """Texts and speaker names -> mels and waveforms.

    Parameters
    ----------
    model:
        A Grad-TTS (put in eval mode while synthesizing).
    speakers:
        Speaker name -> id, as trained (``speakers.json``); a single-speaker model has one entry.
    vocoder:
        ``vocoder(log_mel [B, F, T]) -> wav [B, T * hop]``.
    add_blank, cleaner:
        The text frontend settings the model was trained with.
    mel_range:
        The training mels' per-band range: :meth:`checked` clamps mels to it (plus a margin) before
        vocoding and counts what it clamped. None: no check.

    Examples
    --------
    >>> from robust_gen.speech.vocoder import GriffinLimVocoder
    >>> synthesizer = Synthesizer(GradTTS.tiny(n_speakers=2), {"a": 0, "b": 1}, GriffinLimVocoder(n_iter=2))
    >>> mels = synthesizer.mels(["Hi.", "Good day."], ["a", "b"], n_timesteps=2)
    >>> [m.shape[0] for m in mels], synthesizer.waveforms(mels)[0].numel() == mels[0].shape[1] * 256
    ([80, 80], True)
    """

    def __init__(
        self,
        model: GradTTS,
        speakers: Mapping[str, int],
        vocoder,
        *,
        add_blank: bool = True,
        cleaner: str = "english",
        mel_range: MelRange | None = None,
    ) -> None:
        self.model, self.speakers, self.vocoder = model, dict(speakers), vocoder
        self.add_blank, self.cleaner, self.mel_range = add_blank, cleaner, mel_range

    def speaker_ids(self, names: Sequence[str]) -> torch.Tensor:
        unknown = [name for name in names if name not in self.speakers]
        if unknown:
            raise ValueError(f"unknown speaker(s) {unknown}; this model knows {sorted(self.speakers)}")
        return torch.tensor([self.speakers[name] for name in names], dtype=torch.long)

    def mels(
        self,
        texts: Sequence[str],
        speakers: Sequence[str],
        *,
        n_timesteps: int = 10,
        temperature: float = 1.5,
        sampler: str = "euler_ode",
        length_scale: float = 1.0,
        seed: int = 0,
    ) -> list[torch.Tensor]:
        """One log-mel ``[F, frames]`` per (text, speaker) pair, synthesized as one batch."""
        if len(texts) != len(speakers) or not texts:
            raise ValueError(
                f"need one speaker per text, got {len(texts)} texts and {len(speakers)} speakers"
            )
        ids = [text_to_ids(text, add_blank=self.add_blank, cleaner=self.cleaner) for text in texts]
        lengths = torch.tensor([len(i) for i in ids])
        tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq)
        was_training = self.model.training
        self.model.eval()
        try:
            generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(seed)
            mel, frames = self.model.synthesize(
                tokens,
                lengths,
                speakers=self.speaker_ids(speakers),
                n_timesteps=n_timesteps,
                temperature=temperature,
                sampler=sampler,
                length_scale=length_scale,
                generator=generator,
            )
        finally:
            self.model.train(was_training)
        return [mel[i, :, : int(frames[i])].cpu() for i in range(len(texts))]

    def checked(self, mels: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
        """Mels clamped to the training range (plus a margin) and the count of values clamped in each; the
        mels unchanged and counts of 0 without a range.

        Examples
        --------
        >>> band_range = MelRange(torch.full((80,), -11.5), torch.zeros(80))
        >>> synthesizer = Synthesizer(GradTTS.tiny(), {"a": 0}, None, mel_range=band_range)
        >>> mel = torch.full((80, 4), -5.0); mel[79, 3] = 30.0
        >>> mels, counts = synthesizer.checked([mel])
        >>> counts, float(mels[0].max())
        ([1], 1.0)
        """
        if self.mel_range is None:
            return list(mels), [0] * len(mels)
        pairs = [self.mel_range.check(mel) for mel in mels]
        return [mel for mel, _ in pairs], [count for _, count in pairs]

    def waveforms(self, mels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Vocode each mel on its own (no padding artefacts), ``[frames * hop]`` each, after :meth:`checked`."""
        return [self.vocoder(mel[None])[0] for mel in self.checked(mels)[0]]


def plot_mel(mel: torch.Tensor, path: str | os.PathLike, title: str = "") -> None:
    """Save a log-mel ``[F, frames]`` as a PNG (matplotlib's Agg canvas; no global backend change).

    Examples
    --------
    >>> import tempfile
    >>> path = f"{tempfile.mkdtemp()}/mel.png"
    >>> plot_mel(torch.randn(80, 50), path, "noise")
    >>> Path(path).stat().st_size > 0
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.0, mel.shape[-1] / 40), 3.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(
        mel.float().numpy(), origin="lower", aspect="auto", interpolation="none", cmap="magma"
    )
    figure.colorbar(image, ax=axes, label="log magnitude")
    axes.set_xlabel("frame")
    axes.set_ylabel("mel band")
    axes.set_title(title[:90], fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def _level(db: float) -> float | None:
    return round(db, 2) if math.isfinite(db) else None  # silence is -inf dBFS; JSON has no -inf


def _file_stem(speaker: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", speaker) or "speaker"


def write_samples(
    synthesizer: Synthesizer,
    utterances: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike,
    *,
    sample_rate: int,
    plots: bool = True,
    **sampling: Any,
) -> list[dict]:
    """Synthesize ``(text, speaker)`` pairs into ``out_dir`` (wavs, PNGs, ``samples.jsonl``); return the rows.

    Files are ``<speaker>_<i>.wav`` / ``.png``, ``i`` counting each speaker's utterances from 0. ``sampling``
    goes to :meth:`Synthesizer.mels` (``n_timesteps``, ``temperature``, ``sampler``, ``length_scale``, ``seed``).

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.vocoder import GriffinLimVocoder
    >>> synthesizer = Synthesizer(GradTTS.tiny(), {"solo": 0}, GriffinLimVocoder(n_iter=2))
    >>> rows = write_samples(synthesizer, [("Hi.", "solo"), ("Bye.", "solo")], tempfile.mkdtemp(),
    ...                      sample_rate=22050, plots=False, n_timesteps=2)
    >>> [(r["speaker"], r["path"]) for r in rows]
    [('solo', 'solo_0.wav'), ('solo', 'solo_1.wav')]
    """
    if not utterances:
        raise ValueError("no utterances to synthesize")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mels = synthesizer.mels(
        [text for text, _ in utterances], [speaker for _, speaker in utterances], **sampling
    )
    _, outside = synthesizer.checked(mels)
    wavs = synthesizer.waveforms(mels)
    counts: dict[str, int] = {}
    rows = []
    for (text, speaker), mel, wav, clamped in zip(utterances, mels, wavs, outside):
        index = counts[speaker] = counts.get(speaker, -1) + 1
        stem = f"{_file_stem(speaker)}_{index}"
        save_audio(out / f"{stem}.wav", wav, sample_rate)
        row = {"text": text, "speaker": speaker, "path": f"{stem}.wav", "frames": int(mel.shape[-1])}
        row["seconds"] = round(wav.numel() / sample_rate, 3)
        row["rms_dbfs"], row["peak_dbfs"] = (_level(level(wav)) for level in (rms_db, peak_db))
        if synthesizer.mel_range is not None:
            row["mel_out_of_range"] = clamped
            if clamped:
                log.warning(
                    "%s: %d of %d mel values outside the training range (clamped before vocoding)",
                    out / f"{stem}.wav", clamped, mel.numel(),
                )  # fmt: skip
        if plots:
            plot_mel(mel, out / f"{stem}.png", f"{speaker}: {text}")
            row["png"] = f"{stem}.png"
        rows.append(row)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def read_text_list(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Utterances to synthesize from a text file: lines ``text``, ``text|speaker`` or ``path|text|speaker``
    (a training filelist; its audio path is ignored). Blank lines and ``#`` comments are skipped.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "texts.txt"
    >>> _ = p.write_text("# demo\\nHello there.\\nGood night.|us_f1\\na.wav|See you.|gb_m2\\n")
    >>> read_text_list(p)
    [('Hello there.', None), ('Good night.', 'us_f1'), ('See you.', 'gb_m2')]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text list {path} does not exist")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 1:
            items.append((fields[0], None))
        elif len(fields) in (2, 3) and all(fields):
            items.append((fields[-2], fields[-1]))
        else:
            raise ValueError(
                f"{path}, line {number}: expected text, text|speaker or path|text|speaker, got {line!r}"
            )
    if not items:
        raise ValueError(f"{path} holds no texts")
    return items
