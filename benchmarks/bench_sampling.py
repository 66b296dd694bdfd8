"""Sampling throughput: images/s of the image recipe's guided sampling, and the real-time factor of Grad-TTS.

    python benchmarks/bench_sampling.py [--device cpu|cuda] [--threads 1] [--repeats 3] [--json out.json]
        [--parts image,speech] [--quick]
        images: [--image-model unet_tiny] [--samplers dpm_solver:20,ddim:50] [--batch-size 64]
                [--baseline-images 16] [--guidance-scale 3.0] [--image-run runs/image/default]
        speech: [--speech-models gradtts_tiny] [--n-timesteps 10,50] [--sentences 4] [--vocoder griffin_lim|hifigan]
                [--hifigan-source DIR_OR_HUB_ID] [--frames-per-token 3] [--tts-run RUN_DIR]

Images: ``robust_gen.image.sampling.generate`` (what ``recipes/image/sample.py`` runs) with classifier-free
guidance, including the latent decode and the conversion to uint8, for each sampler. Baseline in the same run: the
same call with ``batch_size=1``, one image at a time (on ``--baseline-images`` images; images/s does not depend on
how many). The table says whether the guidance evaluated the conditional and unconditional branches in one batched
forward (it counts the denoiser's calls and their batch size). Without ``--image-run`` the model is the default
recipe's (configs/image/train.yaml: unet_tiny on 8x8x4 latents of 32-px digits, the recipe's tiny autoencoder) with
random weights: speed does not depend on them.

Speech: Grad-TTS text -> mel (text encoder, durations, ``n_timesteps`` Euler steps of reverse diffusion) -> waveform
with ``robust_gen.speech.synthesis.Synthesizer``. Real-time factor RTF = synthesis seconds / audio seconds; RTF < 1
is faster than real time. Baseline in the same run: one utterance at a time vs all sentences in one padded batch
(``Synthesizer.mels`` takes a batch; the vocoder runs per utterance either way). Untrained weights would predict
durations of about one frame per token, so without ``--tts-run`` the duration predictor is set to
``--frames-per-token`` frames for every token (3: the offline espeak corpus has 2.8 frames of audio per token id,
blanks included), which gives utterances of a realistic length. Griffin-Lim needs no weights; HiFi-GAN needs a
trained generator (``--hifigan-source``); without one, ``--vocoder hifigan`` times HiFi-GAN V1's architecture with
random weights.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix



import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _image_setup import AUTOENCODERS, IMAGE_MODELS, random_autoencoder, random_task

from robust_gen.image.model.denoiser import count_parameters
from robust_gen.image.sampling import SAMPLER_NAMES, balanced_request, generate
from robust_gen.speech.data.mel import MelConfig
from robust_gen.speech.gradtts.model import GradTTS
from robust_gen.speech.synthesis import Synthesizer
from robust_gen.training.recipe import CONFIG_ROOT, compose_config
from robust_gen.training.run_dir import write_json

# Harvard sentences (IEEE 1969), list 1: phonetically balanced, the usual TTS test prompts.
SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
)
SPEECH_MODELS = tuple(sorted(p.stem for p in (CONFIG_ROOT / "tts" / "model").glob("*.yaml")))
# HiFi-GAN V1 (Kong et al. 2020, config_v1: LJSpeech 22.05 kHz, hop 256) in SpeechBrain's HifiganGenerator terms.
HIFIGAN_V1 = dict(in_channels=80, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                  resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                  upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2])
QUICK = {"samplers": "dpm_solver:3,ddim:3", "batch_size": 4, "baseline_images": 2, "repeats": 1,
         "n_timesteps": "2", "sentences": 2, "griffin_lim_iters": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (the recipes' cpu_threads)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--parts", default="image,speech", help="comma-separated: image, speech")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (seconds)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--image-model", choices=IMAGE_MODELS, default="unet_tiny")
    p.add_argument("--autoencoder", choices=AUTOENCODERS, default="tiny")
    p.add_argument("--image-run", type=Path, default=None, help="a trained image run (EMA weights) instead")
    p.add_argument("--samplers", default="dpm_solver:20,ddim:50", help="name:steps pairs")
    p.add_argument("--batch-size", type=int, default=64, help="images per generate() batch")
    p.add_argument("--baseline-images", type=int, default=16, help="images generated one at a time")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--speech-models", default="gradtts_tiny", help=f"comma-separated, of {SPEECH_MODELS}")
    p.add_argument("--tts-run", type=Path, default=None, help="a trained Grad-TTS run instead (one model)")
    p.add_argument("--n-timesteps", default="10,50", help="comma-separated Euler step counts")
    p.add_argument("--sentences", type=int, default=4, help=f"how many of the {len(SENTENCES)} test sentences")
    p.add_argument("--frames-per-token", type=int, default=3, help="durations of an untrained model")
    p.add_argument("--vocoder", choices=["griffin_lim", "hifigan"], default="griffin_lim")
    p.add_argument("--hifigan-source", default=None, help="SpeechBrain HiFi-GAN folder or hub id")
    p.add_argument("--griffin-lim-iters", type=int, default=32, help="as configs/tts/synthesize.yaml")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not args.parts or set(args.parts) - {"image", "speech"}:
        p.error(f"--parts takes image and/or speech, got {args.parts}")
    try:
        args.samplers = [(name, int(steps)) for name, steps in (s.split(":") for s in args.samplers.split(","))]
        args.n_timesteps = [int(n) for n in args.n_timesteps.split(",")]
    except ValueError:
        p.error("--samplers takes name:steps pairs (dpm_solver:20,ddim:50), --n-timesteps integers (10,50)")
    unknown = [name for name, _ in args.samplers if name not in SAMPLER_NAMES]
    if unknown:
        p.error(f"unknown sampler(s) {unknown}; choose from {SAMPLER_NAMES}")
    args.speech_models = [m.strip() for m in args.speech_models.split(",") if m.strip()]
    if args.tts_run is None and set(args.speech_models) - set(SPEECH_MODELS):
        p.error(f"--speech-models must be among {SPEECH_MODELS}, got {args.speech_models}")
    if min(args.repeats, args.batch_size, args.baseline_images, args.sentences, args.frames_per_token,
           *args.n_timesteps, *(s for _, s in args.samplers)) < 1:
        p.error("counts (--repeats, --batch-size, --baseline-images, --sentences, steps) must be >= 1")
    if args.sentences > len(SENTENCES):
        p.error(f"--sentences must be <= {len(SENTENCES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return args


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


# ------------------------------------------------------------------------------------------------------ images
def image_model(args, device: torch.device):
    """(task, autoencoder, meta, description): a trained run's, or the recipe's configs with random weights."""
    if args.image_run is not None:
        from robust_gen.image.build import load_run

        task, autoencoder, meta, cfg = load_run(args.image_run, device=device)
        return task, autoencoder, meta, f"{args.image_run} (step {meta['step']}, EMA), {cfg.model.arch}"
    cfg = compose_config("image", overrides=[f"model={args.image_model}"])
    size, channels = int(cfg.data.resolution), int(cfg.data.channels)
    autoencoder = random_autoencoder(args.autoencoder, channels, size).to(device)
    latent_shape = [autoencoder.latent_channels, size // autoencoder.factor, size // autoencoder.factor]
    task = random_task(cfg, latent_shape=latent_shape).to(device).eval()
    meta = {"num_classes": 10, "class_prompts": [[f"the digit {k}"] for k in range(10)], "captions": [],
            "latent_shape": latent_shape}
    return task, autoencoder, meta, f"{args.image_model} + {args.autoencoder} autoencoder at {size}px, random weights"


def time_images(task, autoencoder, meta, device, *, sampler, steps, num_images, batch_size, guidance, repeats):
    """Median seconds of ``generate`` over ``repeats`` runs, and the denoiser's call batch sizes in the last."""
    calls: list[int] = []
    hook = task.denoiser.register_forward_hook(lambda module, inputs, out: calls.append(int(out.shape[0])))
    request = balanced_request(meta, num_images)

    def run():
        return generate(task, autoencoder, request, latent_shape=meta["latent_shape"], sampler=sampler,
                        num_steps=steps, guidance_scale=guidance, batch_size=batch_size)

    try:
        seconds = []
        for _ in range(repeats):
            calls.clear()
            elapsed, images = _timed(run, device)
            seconds.append(elapsed)
    finally:
        hook.remove()
    if images.shape[0] != num_images:
        raise RuntimeError(f"generate returned {images.shape[0]} images, asked for {num_images}")
    median = statistics.median(seconds)
    return {"images": num_images, "batch_size": batch_size, "seconds": median, "images_per_s": num_images / median,
            "denoiser_calls": len(calls), "denoiser_batch_sizes": sorted(set(calls))}


def bench_images(args, device: torch.device) -> dict:
    task, autoencoder, meta, description = image_model(args, device)
    rows = []
    for sampler, steps in args.samplers:
        common = {"sampler": sampler, "steps": steps, "guidance": args.guidance_scale, "repeats": args.repeats}
        for images, batch in ((2, 2), (1, 1)):  # warm-up of both shapes (allocator, cuDNN autotuning)
            time_images(task, autoencoder, meta, device, **{**common, "steps": 2, "repeats": 1},
                        num_images=images, batch_size=batch)
        batched = time_images(task, autoencoder, meta, device, num_images=args.batch_size,
                              batch_size=args.batch_size, **common)
        single = time_images(task, autoencoder, meta, device, num_images=args.baseline_images, batch_size=1,
                             **common)
        # Measured, not assumed: batched guidance makes one denoiser call per step of batch 2B (not two of B).
        branches = 1 if args.guidance_scale == 1.0 else 2
        rows.append({"sampler": sampler, "steps": steps, "guidance_scale": args.guidance_scale,
                     "batched": batched, "one_at_a_time": single,
                     "ratio": batched["images_per_s"] / single["images_per_s"],
                     "cfg_branches_in_one_forward": batched["denoiser_calls"] == steps
                     and batched["denoiser_batch_sizes"] == [branches * args.batch_size]})
    return {"model": description, "denoiser_parameters": count_parameters(task.denoiser),
            "latent_shape": meta["latent_shape"], "results": rows}


# ------------------------------------------------------------------------------------------------------ speech
def constant_durations(model: GradTTS, frames_per_token: int) -> None:
    """Make the duration predictor give every token ``frames_per_token`` frames (ceil(exp(log d)) in synthesis)."""
    projection = model.encoder.duration.proj
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.fill_(math.log(frames_per_token - 0.5))


def speech_models(args, device: torch.device):
    """Yield (name, synthesizer, mel config, description) for each model to time."""
    if args.tts_run is not None:
        from robust_gen.speech.synthesis import load_trained

        trained = load_trained(args.tts_run, device=str(device))
        synthesizer = Synthesizer(trained.model, trained.speakers, None, add_blank=trained.add_blank,
                                  cleaner=trained.cleaner)
        yield "tts-run", synthesizer, trained.mel_config, f"{args.tts_run}, trained, step {trained.step}"
        return
    for name in args.speech_models:
        options = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "tts" / "model" / f"{name}.yaml"))
        options.pop("_target_", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = GradTTS(**options).to(device)
        constant_durations(model, args.frames_per_token)
        yield name, Synthesizer(model, {"speaker": 0}, None), MelConfig(), \
            f"random weights, {args.frames_per_token} frames per token"


def make_vocoder(args, mel_config: MelConfig, device: torch.device, workdir: Path):
    from robust_gen.speech.vocoder import build_vocoder, write_local_hifigan

    if args.vocoder == "griffin_lim":
        return build_vocoder("griffin_lim", mel_config=mel_config, n_iter=args.griffin_lim_iters), \
            f"Griffin-Lim ({args.griffin_lim_iters} iterations)"
    source, label = args.hifigan_source, f"HiFi-GAN {args.hifigan_source}"
    if source is None:
        source, label = str(write_local_hifigan(workdir / "hifigan_v1", HIFIGAN_V1)), "HiFi-GAN V1, random weights"
    return build_vocoder("hifigan", mel_config=mel_config, device=str(device), source=source,
                         savedir=str(workdir / "hifigan_saved")), label


def time_speech(synthesizer: Synthesizer, texts, n_timesteps: int, batched: bool, sample_rate: int, device,
                repeats: int) -> dict:
    """Median seconds of text -> mel and of the vocoder, for all ``texts`` in one batch or one at a time."""
    speaker = next(iter(synthesizer.speakers))
    groups = [list(texts)] if batched else [[text] for text in texts]
    mel_runs, vocoder_runs = [], []
    for _ in range(repeats):
        mel_seconds = vocoder_seconds = 0.0
        wavs = []
        for group in groups:
            elapsed, mels = _timed(lambda g=group: synthesizer.mels(g, [speaker] * len(g), n_timesteps=n_timesteps),
                                   device)
            mel_seconds += elapsed
            elapsed, out = _timed(lambda m=mels: synthesizer.waveforms(m), device)
            vocoder_seconds += elapsed
            wavs.extend(out)
        mel_runs.append(mel_seconds)
        vocoder_runs.append(vocoder_seconds)
    audio = sum(w.numel() for w in wavs) / sample_rate
    mel_s, vocoder_s = statistics.median(mel_runs), statistics.median(vocoder_runs)
    return {"utterances": len(texts), "audio_seconds": audio, "text_to_mel_seconds": mel_s,
            "vocoder_seconds": vocoder_s, "seconds": mel_s + vocoder_s, "rtf": (mel_s + vocoder_s) / audio,
            "rtf_text_to_mel": mel_s / audio}


def bench_speech(args, device: torch.device) -> dict:
    texts = SENTENCES[: args.sentences]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, synthesizer, mel_config, description in speech_models(args, device):
            synthesizer.vocoder, vocoder_label = make_vocoder(args, mel_config, device, Path(workdir))
            timing = {"sample_rate": mel_config.sample_rate, "device": device, "repeats": args.repeats}
            time_speech(synthesizer, texts[:1], 2, True, **{**timing, "repeats": 1})  # warm-up
            for n in args.n_timesteps:
                batched = time_speech(synthesizer, texts, n, True, **timing)
                single = time_speech(synthesizer, texts, n, False, **timing)
                rows.append({"model": name, "description": description,
                             "parameters": sum(p.numel() for p in synthesizer.model.parameters()),
                             "n_timesteps": n, "vocoder": vocoder_label, "batched": batched, "one_at_a_time": single,
                             "ratio": single["seconds"] / batched["seconds"]})
    return {"sentences": list(texts), "results": rows}


# ------------------------------------------------------------------------------------------------------ report
def print_report(figures: dict) -> None:
    s = figures["settings"]
    print(f"device {s['device_name']} (threads {s['threads']}), median of {s['repeats']} run(s); torch {s['torch']}")
    if "image" in figures:
        im = figures["image"]
        print(f"\nimage sampling: {im['model']} ({im['denoiser_parameters'] / 1e6:.2f}M params, latents "
              f"{'x'.join(map(str, im['latent_shape']))}), classifier-free guidance, latent decode included")
        print(f"  {'sampler':16s} {'batched':>18s} {'one at a time':>18s} {'ratio':>7s}  CFG branches")
        for r in im["results"]:
            b, o = r["batched"], r["one_at_a_time"]
            cfg = ("one batched forward" if r["cfg_branches_in_one_forward"] else "separate forwards") + \
                f" ({b['denoiser_calls']} calls of batch {','.join(map(str, b['denoiser_batch_sizes']))})"
            print(f"  {r['sampler'] + ' ' + str(r['steps']):16s} {b['images_per_s']:9.1f} img/s B{b['batch_size']:<3d}"
                  f" {o['images_per_s']:9.2f} img/s B1   {r['ratio']:6.1f}x  {cfg}")
    if "speech" in figures:
        sp = figures["speech"]
        print(f"\nspeech synthesis, {len(sp['sentences'])} sentences; RTF = synthesis s / audio s (< 1: faster than "
              "real time); baseline: one utterance at a time")
        print(f"  {'model':14s} {'steps':>5s} {'mode':>13s} {'audio s':>8s} {'text->mel s':>11s} {'vocoder s':>9s} "
              f"{'RTF':>7s} {'RTF mel':>8s}")
        for r in sp["results"]:
            for mode in ("batched", "one_at_a_time"):
                t = r[mode]
                print(f"  {r['model']:14s} {r['n_timesteps']:5d} {mode.replace('_', ' '):>13s} {t['audio_seconds']:8.2f} "
                      f"{t['text_to_mel_seconds']:11.2f} {t['vocoder_seconds']:9.2f} {t['rtf']:7.3f} "
                      f"{t['rtf_text_to_mel']:8.3f}")
            print(f"  {'':14s} {'':5s} {'ratio':>13s} one at a time / batched: {r['ratio']:.2f}x  ({r['vocoder']}; "
                  f"{r['description']}; {r['parameters'] / 1e6:.2f}M params)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    figures = {"settings": {"device": str(device), "threads": torch.get_num_threads(), "repeats": args.repeats,
                            "quick": args.quick, "torch": torch.__version__,
                            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}}
    if "image" in args.parts:
        figures["image"] = bench_images(args, device)
    if "speech" in args.parts:
        figures["speech"] = bench_speech(args, device)
    print_report(figures)
    if args.json is not None:
        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
