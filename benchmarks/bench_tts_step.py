"""Grad-TTS training step: the recipe's step vs a plain implementation of the same step.

Recipe step: mels read from the cache (computed once by ``prepare_utterances``), token ids computed once,
monotonic alignment search by the compiled numba kernel (``backend="auto"``).
Plain step: every step loads the audio, computes its mel and phonemizes its text again, and aligns with the
pure-Python reference search (``backend="reference"``), as a straightforward port of the paper's code would
(the original Grad-TTS recomputes mels in its dataset's ``__getitem__``; its alignment is a Cython loop).

Both run the same model, batches and randomness, so their losses agree; the benchmark checks that, then prints
the time per step of each (split into data, forward+backward) and the ratio.

Command::

    python benchmarks/bench_tts_step.py [--steps 5] [--batch-size 8] [--threads 1] [--model gradtts_tiny]
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix



import argparse
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf

from robust_gen.diffusion.losses import L2Loss
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.speech.data.audio import load_audio
from robust_gen.speech.data.corpus import DEFAULT_VOICES, synthesize_corpus
from robust_gen.speech.data.dataset import MelCache, TTSDataset, collate_tts, prepare_utterances, speaker_map
from robust_gen.speech.data.filelists import read_filelist
from robust_gen.speech.data.mel import MelConfig, MelSpectrogram
from robust_gen.speech.gradtts.alignment import monotonic_alignment_search
from robust_gen.speech.gradtts.model import GradTTS, prior_log_likelihood
from robust_gen.speech.task import GradTTSTask
from robust_gen.speech.text import text_to_ids

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tts" / "model"


def build_model(name: str, n_speakers: int) -> GradTTS:
    options = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    options.pop("_target_")
    torch.manual_seed(0)
    return GradTTS(**options, n_speakers=n_speakers)


def reference_align(self, mu_x, x_mask, y, y_mask):
    """GradTTS.align with the pure-Python reference search."""
    with torch.no_grad():
        log_p = prior_log_likelihood(mu_x.detach().float(), y.float())
        return monotonic_alignment_search(log_p, x_mask, y_mask, backend="reference").to(mu_x.dtype)


def plain_batch(records, indices, speakers, mel: MelSpectrogram) -> dict:
    """The batch built from scratch: audio -> mel and text -> ids for every item, every step."""
    items = []
    for i in indices:
        record = records[i]
        wav = load_audio(record["path"], mel.config.sample_rate)
        with torch.no_grad():
            items.append(
                {
                    "tokens": torch.tensor(text_to_ids(record["text"])),
                    "mel": mel(wav),
                    "speaker": torch.tensor(speakers[record["speaker"]]),
                }
            )
    return collate_tts(items)


def run(
    task: GradTTSTask, make_batch, steps: int, batch_size: int
) -> tuple[list[float], list[float], list[float]]:
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
    data_times, compute_times, losses = [], [], []
    for step in range(steps):
        indices = list(range(step * batch_size, (step + 1) * batch_size))
        start = time.perf_counter()
        batch = make_batch(indices)
        loaded = time.perf_counter()
        terms = task(batch, BatchGenerator(0, step))
        loss = sum((t.values * t.weights).sum() / t.weights.sum() for t in terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        data_times.append(loaded - start)
        compute_times.append(done - loaded)
        losses.append(loss.item())
    return data_times, compute_times, losses


def alignment_times(
    fast: GradTTSTask, plain: GradTTSTask, batch: dict, repeats: int = 3
) -> tuple[float, float]:
    """Median milliseconds of the alignment search alone on one batch, for both tasks."""
    from robust_gen.speech.gradtts.text_encoder import sequence_mask

    with torch.no_grad():
        mu_x, _, x_mask = fast.model.encode(
            batch["tokens"],
            batch["token_lengths"],
            fast.model.speaker_vectors(batch["speakers"], len(batch["speakers"])),
        )
    y_mask = sequence_mask(batch["mel_lengths"], batch["mels"].shape[-1]).unsqueeze(1).float()
    times = []
    for task in (fast, plain):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            task.model.align(mu_x, x_mask, batch["mels"], y_mask)
            runs.append(1000 * (time.perf_counter() - start))
        times.append(statistics.median(runs))
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="gradtts_tiny")
    parser.add_argument("--segment-frames", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="bench_tts_"))
    voices = DEFAULT_VOICES[:4]
    per_voice = -(-args.steps * args.batch_size // len(voices))
    filelist = synthesize_corpus(
        workdir / "corpus", voices=voices, utterances_per_voice=per_voice, check_voices=False
    )
    records = read_filelist(filelist)
    mel_config = MelConfig()
    prepared = prepare_utterances(records, cache=MelCache(workdir / "mels", mel_config))
    speakers = speaker_map(r["speaker"] for r in prepared.records)
    dataset = TTSDataset(prepared.records, speakers)
    mel = MelSpectrogram(mel_config)

    fast = GradTTSTask(build_model(args.model, len(speakers)), L2Loss(), args.segment_frames)
    plain = GradTTSTask(build_model(args.model, len(speakers)), L2Loss(), args.segment_frames)
    plain.model.align = types.MethodType(reference_align, plain.model)

    # One warm-up step each (numba's first call, allocator), then the timed steps on the same batches.
    run(fast, lambda idx: collate_tts([dataset[i] for i in idx]), 1, args.batch_size)
    run(plain, lambda idx: plain_batch(prepared.records, idx, speakers, mel), 1, args.batch_size)
    fast = GradTTSTask(build_model(args.model, len(speakers)), L2Loss(), args.segment_frames)
    plain = GradTTSTask(build_model(args.model, len(speakers)), L2Loss(), args.segment_frames)
    plain.model.align = types.MethodType(reference_align, plain.model)
    fast_data, fast_compute, fast_losses = run(
        fast, lambda idx: collate_tts([dataset[i] for i in idx]), args.steps, args.batch_size
    )
    plain_data, plain_compute, plain_losses = run(
        plain, lambda idx: plain_batch(prepared.records, idx, speakers, mel), args.steps, args.batch_size
    )
    align_fast, align_plain = alignment_times(
        fast, plain, collate_tts([dataset[i] for i in range(args.batch_size)])
    )
    agree = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(fast_losses, plain_losses))

    def ms(values: list[float]) -> float:
        return 1000 * statistics.median(values)

    fast_total = ms([d + c for d, c in zip(fast_data, fast_compute)])
    plain_total = ms([d + c for d, c in zip(plain_data, plain_compute)])
    print(f"model {args.model}, batch {args.batch_size}, {args.segment_frames}-frame crops, threads {args.threads}, "
          f"median of {args.steps} steps")  # fmt: skip
    print(
        f"recipe step: {fast_total:8.1f} ms  (data {ms(fast_data):7.1f} ms, forward+backward {ms(fast_compute):7.1f} ms)"
    )
    print(
        f"plain step:  {plain_total:8.1f} ms  (data {ms(plain_data):7.1f} ms, forward+backward {ms(plain_compute):7.1f} ms)"
    )
    print(
        f"  of which alignment search: recipe {align_fast:.1f} ms (numba), plain {align_plain:.1f} ms (Python)"
    )
    print(
        f"ratio plain / recipe: {plain_total / fast_total:.2f}x   (largest relative loss difference {agree:.1e})"
    )


if __name__ == "__main__":
    main()
