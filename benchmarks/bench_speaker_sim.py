"""Speaker-embedding throughput: batched (padding + relative lengths) vs one file at a time.

    python benchmarks/bench_speaker_sim.py [--model runs/speaker/default/model] [--files 64] [--batch 16]
                                           [--repeats 3] [--device cpu] [--threads N]

Files are utterances of the embedded espeak-ng corpus (22.05 kHz, resampled to the model's 16 kHz). Without
--model it uses runs/speaker/default/model when present, else a random-init model of the same architecture
(throughput does not depend on the weights). Prints files/s end to end (decode + resample + embed) and for the
network alone (waveforms already in memory), for both modes, and the batched / one-at-a-time ratio. The two
modes alternate in every repeat so drift of the machine's load affects both alike; the median is reported.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from robust_gen.speaker import (
    SpeakerEmbedder,
    SpeakerModelSpec,
    TrainedSpeakerModel,
    build_speaker_modules,
    hyperparams_yaml,
    load_speaker_encoder,
    save_speaker_model,
)
from robust_gen.speech.data.corpus import synthesize_corpus
from robust_gen.speech.data.filelists import read_filelist

DEFAULT_MODEL = Path("runs/speaker/default/model")


def random_init_model(folder: Path) -> Path:
    """Save an untrained model of the offline architecture (same cost per file as the trained one)."""
    spec = SpeakerModelSpec()
    speakers = [f"s{i}" for i in range(10)]
    modules = build_speaker_modules(hyperparams_yaml(spec, len(speakers), folder))
    modules["label_encoder"].update_from_iterable(speakers)
    modules["mean_var_norm_emb"](torch.randn(4, 1, spec.lin_neurons), torch.ones(4))  # some statistics
    trained = TrainedSpeakerModel(hyperparams_yaml(spec, len(speakers), folder), modules, speakers, spec)
    return save_speaker_model(trained, folder)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or (DEFAULT_MODEL if (DEFAULT_MODEL / "hyperparams.yaml").is_file() else None)
    with tempfile.TemporaryDirectory() as scratch:
        if model is None:
            model = random_init_model(Path(scratch) / "model")
            print(f"model: random-init offline architecture ({model})")
        else:
            print(f"model: {model}")
        encoder = load_speaker_encoder(model, device=args.device)
        files = [Path(r["path"]) for r in read_filelist(synthesize_corpus())][: args.files]
        modes = {
            f"batched (batch {args.batch})": SpeakerEmbedder(encoder, batch_size=args.batch, progress=False),
            "one at a time": SpeakerEmbedder(encoder, batch_size=1, progress=False),
        }
        loader = next(iter(modes.values()))
        waves = [loader.load(f) for f in files]
        seconds = sum(w.numel() for w in waves) / loader.sample_rate
        print(
            f"{len(files)} files, {seconds:.0f} s of audio, device {args.device}, torch threads {torch.get_num_threads()}"
        )
        for embedder in modes.values():  # warm-up
            embedder.embed_files(files[: args.batch])
        end_to_end = {name: [] for name in modes}
        network = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, embedder in modes.items():
                sync(args.device)
                start = time.perf_counter()
                embedder.embed_files(files)
                sync(args.device)
                end_to_end[name].append(len(files) / (time.perf_counter() - start))
                order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
                start = time.perf_counter()
                for begin in range(0, len(order), embedder.batch_size):
                    embedder.embed_waveforms([waves[i] for i in order[begin : begin + embedder.batch_size]])
                sync(args.device)
                network[name].append(len(files) / (time.perf_counter() - start))
    names = list(modes)
    for label, table in (("end to end", end_to_end), ("network only", network)):
        rates = {name: statistics.median(values) for name, values in table.items()}
        text = ", ".join(f"{name} {rate:.1f} files/s" for name, rate in rates.items())
        print(f"{label}: {text}; ratio {rates[names[0]] / rates[names[1]]:.2f}x")


if __name__ == "__main__":
    main()
