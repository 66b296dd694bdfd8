"""Audit a Grad-TTS run's training data for speaker contamination: does an utterance fit its claimed speaker?

A multi-speaker Grad-TTS conditions its encoder and decoder on the speaker. For every utterance the audit
computes, under each speaker the model knows, the two losses that depend on the voice, on the whole utterance
(no crop) at fixed noise levels with fixed noise (:mod:`robust_gen.audit.probes`):

* the diffusion (decoder) loss: squared error of the noise estimate, Grad-TTS's score-matching term;
* the prior loss: the mel's distance to the speaker-conditioned encoder output ``mu_y`` (Grad-TTS's prior term).

The score of an utterance is its claimed speaker's loss minus the lowest loss under another speaker (positive:
another voice explains the recording better), summed over the two terms; the suggested speaker is the argmin.
Baselines beside it: each term's margin alone, ``final_loss`` (the claimed speaker's diffusion loss) and the
recorded loss over training (``trainer.track_sample_losses``). A single-speaker model cannot compare speakers:
the score then falls back to the claimed speaker's loss (the outlier score) and the summary says so.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from robust_gen.audit.probes import DEFAULT_LEVELS, fixed_times, probe_noise
from robust_gen.audit.report import AuditScores
from robust_gen.audit.trajectory import tracked_loss_score
from robust_gen.corruption.manifest import Manifest
from robust_gen.diffusion.losses import L2Loss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.speech.data.dataset import build_training_set, collate_tts
from robust_gen.speech.gradtts.decoder import fix_len_compatibility
from robust_gen.speech.gradtts.model import GradTTS, prior_loss_per_sample
from robust_gen.speech.gradtts.text_encoder import sequence_mask
from robust_gen.speech.synthesis import load_trained
from robust_gen.training.recipe import MANIFEST_NAME
from robust_gen.training.sample_losses import SAMPLE_INDEX_KEY

__all__ = ["SpeechAuditData", "audit_speech_run", "speaker_losses", "write_top_list"]

log = logging.getLogger(__name__)


@dataclass
class SpeechAuditData:
    """The run's training utterances as trained on (records carry ``sample_index``, ``speaker``, ``path``)."""

    ids: np.ndarray
    records: list[dict]
    manifest: Manifest | None
    num_records: int
    dataset: object


@torch.no_grad()
def speaker_losses(
    model: GradTTS, batch: dict, ids, speaker_ids: list[int], *, levels=DEFAULT_LEVELS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(diffusion, prior)``, each ``[B, len(speaker_ids)]``: the utterances' losses under each speaker.

    Examples
    --------
    >>> model = GradTTS.tiny(n_speakers=2).eval()
    >>> batch = {"tokens": torch.randint(1, 149, (2, 5)), "token_lengths": torch.tensor([5, 3]),
    ...          "mels": torch.randn(2, 80, 12), "mel_lengths": torch.tensor([12, 9])}
    >>> diffusion, prior = speaker_losses(model, batch, [0, 1], [0, 1], levels=(0.5,))
    >>> diffusion.shape, prior.shape
    (torch.Size([2, 2]), torch.Size([2, 2]))
    """
    tokens, x_lengths = batch["tokens"], batch["token_lengths"]
    y, y_lengths = batch["mels"], batch["mel_lengths"]
    b = tokens.shape[0]
    frames = fix_len_compatibility(y.shape[-1], model.decoder.num_downsamplings)
    align_mask = sequence_mask(y_lengths, y.shape[-1]).unsqueeze(1).to(y.dtype)
    y_padded = torch.nn.functional.pad(y, (0, frames - y.shape[-1]))
    y_mask = sequence_mask(y_lengths, frames).unsqueeze(1).to(y.dtype)
    objective = DiffusionObjective(model.schedule, L2Loss(), prediction="eps")
    times = fixed_times(model.schedule, levels, b)
    noises = [probe_noise(y_padded.shape[1:], ids, seed, level) for level in range(len(levels))]
    diffusion = torch.zeros(b, len(speaker_ids), dtype=torch.float64)
    prior = torch.zeros_like(diffusion)
    for column, speaker_id in enumerate(speaker_ids):
        speaker = model.speaker_vectors(torch.full((b,), int(speaker_id)), b)
        mu_x, _, x_mask = model.encode(tokens, x_lengths, speaker)
        path = model.align(mu_x, x_mask, y, align_mask)
        mu_y = mu_x @ torch.nn.functional.pad(path, (0, frames - path.shape[-1]))
        prior[:, column] = prior_loss_per_sample(y_padded, mu_y, y_mask).double()
        for t, noise in zip(times, noises, strict=True):
            out = objective(model.noise_estimate, y_padded, mask=y_mask, mu=mu_y, t=t, noise=noise,
                            model_kwargs={"mu": mu_y, "mask": y_mask, "speaker": speaker})
            diffusion[:, column] += out.loss.double() / len(levels)
    return diffusion, prior


def load_speech_audit_data(cfg) -> SpeechAuditData:
    """Rebuild the run's training set from its config (corpus and mel cache are reused; the run is not written)."""
    from robust_gen.speech.data.mel import MelConfig

    with tempfile.TemporaryDirectory() as scratch:  # build_training_set writes filelists and a manifest: not here
        training = build_training_set(
            OmegaConf.to_container(cfg.data, resolve=True), mel_config=MelConfig(**OmegaConf.to_container(cfg.mel)),
            corruption=instantiate(cfg.corruption), run_dir=scratch, add_blank=bool(cfg.text.add_blank),
            cleaner=str(cfg.text.cleaner),
        )
        manifest_path = Path(scratch) / MANIFEST_NAME
        manifest = Manifest.load(manifest_path) if manifest_path.is_file() else None
    records = training.dataset.records
    ids = np.array([int(r[SAMPLE_INDEX_KEY]) for r in records], dtype=np.int64)
    num_records = manifest.num_samples if manifest is not None else int(ids.max(initial=-1)) + 1
    return SpeechAuditData(ids, records, manifest, num_records, training.dataset)


def _margin(losses: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    rows = np.arange(len(claimed))
    others = losses.copy()
    others[rows, claimed] = np.inf
    return losses[rows, claimed] - others.min(axis=1)


def audit_speech_run(
    run_dir: str | Path, *, levels=DEFAULT_LEVELS, seed: int = 0, batch_size: int = 16, device: str = "cpu"
) -> tuple[AuditScores, SpeechAuditData]:
    """Score every training utterance of a tts run for speaker contamination (see the module docstring)."""
    run_dir = Path(run_dir)
    trained = load_trained(run_dir, device=device)
    data = load_speech_audit_data(trained.config)
    names = {v: k for k, v in trained.speakers.items()}
    speaker_ids = sorted(names)
    diffusion, prior = [], []
    for start in range(0, len(data.records), batch_size):
        rows = range(start, min(start + batch_size, len(data.records)))
        batch = collate_tts([data.dataset[i] for i in rows])
        batch = {k: v.to(device) for k, v in batch.items()}
        d, p = speaker_losses(trained.model, batch, data.ids[start:start + len(rows)], speaker_ids,
                              levels=levels, seed=seed)
        diffusion.append(d)
        prior.append(p)
    diffusion, prior = torch.cat(diffusion).numpy(), torch.cat(prior).numpy()
    claimed = np.array([trained.speakers[r["speaker"]] for r in data.records])
    own = diffusion[np.arange(len(claimed)), claimed]
    settings = {"levels": list(levels), "seed": seed, "checkpoint_step": trained.step, "weights": "ema"}
    baselines = {"final_loss": own}
    tracked = tracked_loss_score(run_dir, data.ids)
    if tracked is not None:
        baselines["tracked_loss"] = tracked
    given = [r["speaker"] for r in data.records]
    if len(speaker_ids) < 2:
        settings["score"] = "final_loss (a single-speaker model has no other speaker to compare with)"
        return AuditScores("speaker_contamination", data.ids, own, given, None, baselines, settings), data
    diffusion_margin, prior_margin = _margin(diffusion, claimed), _margin(prior, claimed)
    scores = diffusion_margin + prior_margin
    suggested = [names[int(k)] for k in (diffusion + prior).argmin(axis=1)]
    baselines.update(diffusion_margin=diffusion_margin, prior_margin=prior_margin)
    settings["score"] = "margin of (diffusion + prior) loss: claimed speaker minus the best other speaker"
    return AuditScores("speaker_contamination", data.ids, scores, given, suggested, baselines, settings,
                       field="speaker"), data


def write_top_list(audit: AuditScores, data: SpeechAuditData, path: str | Path, count: int = 64) -> Path:
    """The ``count`` top-flagged utterances, one a line: ``rank  id  score  claimed -> suggested  path  text``."""
    from robust_gen.training.run_dir import atomic_write_text

    lines = []
    for rank, i in enumerate(audit.ranking()[:count], start=1):
        record = data.records[i]
        suggested = "" if audit.suggested is None else f" -> {audit.suggested[i]}"
        lines.append(f"{rank}\t{int(audit.ids[i])}\t{audit.scores[i]:.5g}\t{audit.given[i]}{suggested}\t"
                     f"{record.get('path', '')}\t{record.get('text', '')}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)
