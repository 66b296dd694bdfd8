"""Sampling for the image recipe, shared by the trainer's end-of-run ``eval_fn`` and ``recipes/image/sample.py``.

Samplers all have the core's signature (:mod:`robust_gen.diffusion.samplers`): ``ddim`` and ``ddpm`` are the
core's; ``diffusers_ddim`` and ``dpm_solver`` (DPM-Solver++ 2M, the sampler of Chen et al.'s evaluation) run
diffusers' ``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` built from the run's own ``DiscreteVP`` betas.
The network is wrapped to predict noise (:class:`~robust_gen.diffusion.samplers.EpsModel`) and guided with
classifier-free guidance (:class:`~robust_gen.diffusion.samplers.Guided`): ``[null, condition]`` with one
scale, or ``[null, semantics, semantics + control]`` with a separate control scale (Berrada et al. 2024).

For evaluation, :func:`write_samples` writes ``<dir>/images.npz`` with ``images`` (uint8 ``[N, H, W, C]``),
``labels`` (int64 ``[N]``, -1 without classes) and ``captions`` (a string array; read it with
``np.load(path)``, no pickle), plus ``grid.png`` and ``info.json``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from robust_gen.diffusion.samplers import EpsModel, Guided, get_sampler
from robust_gen.diffusion.schedules import DiscreteVP, NoiseSchedule
from robust_gen.image.data.imaging import save_grid, to_uint8
from robust_gen.image.model.autoencoder import ImageAutoencoder
from robust_gen.training.run_dir import atomic_write_bytes, write_json

__all__ = [
    "SAMPLER_NAMES",
    "SampleRequest",
    "balanced_request",
    "diffusers_scheduler",
    "generate",
    "get_image_sampler",
    "grid_columns",
    "make_eval_fn",
    "sampled_classes",
    "write_samples",
]

SAMPLER_NAMES = ("ddim", "ddpm", "diffusers_ddim", "dpm_solver")


def diffusers_scheduler(name: str, schedule: NoiseSchedule):
    """A diffusers scheduler with ``schedule``'s exact betas, predicting noise, with "trailing" step spacing
    (so that, like the core's grids, sampling starts at the last training step).

    Examples
    --------
    >>> s = diffusers_scheduler("dpm_solver", DiscreteVP("linear", 1000, 0.0015, 0.0195))
    >>> type(s).__name__, s.config.num_train_timesteps
    ('DPMSolverMultistepScheduler', 1000)
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"diffusers schedulers need a DiscreteVP schedule, got {schedule!r}")
    common = {
        "num_train_timesteps": schedule.num_steps,
        "trained_betas": schedule.betas.numpy(),
        "prediction_type": "epsilon",
        "timestep_spacing": "trailing",
    }
    if name == "diffusers_ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"no diffusers scheduler for sampler {name!r}")


def _scheduler_sampler(name: str) -> Callable[..., torch.Tensor]:
    @torch.no_grad()
    def sample(model, x, times, *, schedule, extra_args=None, callback=None, generator=None, mean=None, eta=0.0):
        if mean is not None:
            raise ValueError(f"sampler {name!r} does not support a mean-shifted process")
        scheduler = diffusers_scheduler(name, schedule)
        scheduler.set_timesteps(len(times) - 1, device=x.device)
        step_kwargs = {"eta": eta} if name == "diffusers_ddim" else {}
        for i, t in enumerate(scheduler.timesteps):
            eps = model(x, t.expand(x.shape[0]), **(extra_args or {}))
            x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "denoised": None})
        return x

    sample.__name__ = name
    return sample


def get_image_sampler(name: str) -> Callable[..., torch.Tensor]:
    """A sampler by name (:data:`SAMPLER_NAMES`), with the core's call signature.

    Examples
    --------
    >>> get_image_sampler("dpm_solver").__name__, get_image_sampler("ddim").__name__
    ('dpm_solver', 'ddim')
    """
    if name in ("diffusers_ddim", "dpm_solver"):
        return _scheduler_sampler(name)
    if name in ("ddim", "ddpm"):
        return get_sampler(name)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLER_NAMES}")


@dataclass
class SampleRequest:
    """What to sample: one label and caption per image, and the control metadata (``[N, K]`` or None)."""

    labels: torch.Tensor
    captions: list[str]
    control: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)


def sampled_classes(meta: dict) -> list[int]:
    """The classes a run's samples are drawn for: the run's ``sample_classes`` (one concept for a run trained on
    one concept), every class for runs written before that key existed, none for unlabelled data.

    Examples
    --------
    >>> sampled_classes({"num_classes": 3}), sampled_classes({"num_classes": 3, "sample_classes": [2]})
    ([0, 1, 2], [2])
    """
    return list(meta.get("sample_classes") or range(int(meta.get("num_classes", 0))))


def grid_columns(meta: dict) -> int | None:
    """Columns of a sample grid: one per sampled class (up to 16); None (a square grid) for one class or none.

    Examples
    --------
    >>> grid_columns({"num_classes": 10}), grid_columns({"num_classes": 10, "sample_classes": [0]})
    (10, None)
    """
    classes = len(sampled_classes(meta))
    return min(classes, 16) if classes > 1 else None


def balanced_request(meta: dict, num_images: int, control: Sequence[float] | None = None) -> SampleRequest:
    """``num_images`` requests balanced over the classes the model was trained on (``meta["sample_classes"]``:
    one concept for a run trained on one concept; every class otherwise), each with a caption from its class's
    prompts; without classes, the dataset's captions in turn (labels -1).

    Examples
    --------
    >>> meta = {"num_classes": 2, "class_prompts": [["a cat"], ["a dog", "the dog"]], "captions": []}
    >>> r = balanced_request(meta, 4)
    >>> r.labels.tolist(), r.captions
    ([0, 1, 0, 1], ['a cat', 'a dog', 'a cat', 'the dog'])
    >>> balanced_request({**meta, "sample_classes": [1]}, 3).labels.tolist()  # a run trained on class 1 only
    [1, 1, 1]
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    classes = sampled_classes(meta)
    if classes:
        labels = [classes[i % len(classes)] for i in range(num_images)]
        prompts = meta["class_prompts"]
        n = len(classes)
        captions = [prompts[c][(i // n) % len(prompts[c])] if prompts[c] else "" for i, c in enumerate(labels)]
    else:
        pool = meta.get("captions") or []
        if not pool:
            raise ValueError("the run has neither classes nor captions to sample")
        labels, captions = [-1] * num_images, [pool[i % len(pool)] for i in range(num_images)]
    values = None if control is None else torch.tensor([list(control)] * num_images, dtype=torch.float32)
    return SampleRequest(torch.tensor(labels, dtype=torch.long), captions, values)


def _conditions(task, request: SampleRequest, rows: slice, control_guidance: float | None) -> list[dict]:
    labels, captions = request.labels[rows], request.captions[rows]
    control = None if request.control is None else request.control[rows]
    common = {"labels": labels, "captions": captions, "control": control, "batch_size": len(captions)}
    if task.conditioner.kind == "class" and bool((labels < 0).any()):
        raise ValueError("class-conditional sampling needs labels >= 0")
    cond = task.condition_kwargs(**common)
    if control_guidance is None:
        # Standard CFG on semantics: both branches see the same control metadata (as SDXL's micro-conditioning).
        return [task.condition_kwargs(**common, semantic=False), cond]
    null = task.condition_kwargs(**common, semantic=False, use_control=False)
    semantic_only = task.condition_kwargs(**common, use_control=False)
    return [null, semantic_only, cond]


@torch.no_grad()
def generate(
    task,
    autoencoder: ImageAutoencoder,
    request: SampleRequest,
    *,
    latent_shape: Sequence[int],
    sampler: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float = 1.0,
    control_guidance: float | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "sampling",
) -> np.ndarray:
    """Sample ``len(request)`` images (uint8 ``[N, H, W, C]``) from a trained task module (EMA weights).

    The starting noise of all images is drawn at once from ``seed``, so an image does not depend on the batch
    size. ``guidance_scale`` 1 with no ``control_guidance`` runs the conditional model alone. ``progress`` shows
    a bar (titled ``desc``) over every sampler step of every batch.
    """
    device = task.scaling_factor.device
    was_training = task.training
    task.eval()
    sample_fn = get_image_sampler(sampler)
    schedule = task.schedule
    times = schedule.sampling_times(num_steps)
    noise = torch.randn((len(request), *latent_shape), generator=torch.Generator().manual_seed(seed))
    net = EpsModel(task.denoiser, schedule, prediction=task.prediction)
    images = []
    batches = range(0, len(request), batch_size)
    bar = tqdm(total=len(batches) * int(num_steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for index, start in enumerate(batches):
            rows = slice(start, start + batch_size)
            conditions = _conditions(task, request, rows, control_guidance)
            if guidance_scale == 1.0 and control_guidance is None:
                model, extra = net, conditions[-1]
            else:
                scales = [guidance_scale] if control_guidance is None else [guidance_scale, control_guidance]
                model, extra = Guided(net, conditions, scales), {}
            generator = torch.Generator(device=device).manual_seed(seed * 100_003 + index)
            kwargs = {"eta": eta} if sampler in ("ddim", "diffusers_ddim") and eta else {}
            latents = sample_fn(model, noise[rows].to(device), times.to(device), schedule=schedule, extra_args=extra,
                                generator=generator, callback=lambda _: bar.update(), **kwargs)
            pixels = autoencoder.decode(latents / task.scaling_factor)
            images.append(to_uint8(pixels.cpu()))
    finally:
        bar.close()
        task.train(was_training)
    return np.concatenate(images)


def write_samples(
    out_dir: str | Path, images: np.ndarray, labels: Sequence[int], captions: Sequence[str], info: dict | None = None,
    nrow: int | None = None, class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``images.npz`` (the evaluation format in the module docstring), ``grid.png`` and ``info.json``.

    The grid's title gives the guidance scale, sampler and training step of ``info``; each column is labelled
    with its class (a name from ``class_names``) or, for unlabelled columns of one prompt, the prompt.

    Examples
    --------
    >>> import tempfile
    >>> d = write_samples(tempfile.mkdtemp(), np.zeros((2, 4, 4, 1), np.uint8), [0, 1], ["a", "b"])
    >>> data = np.load(d / "images.npz")
    >>> data["images"].shape, data["labels"].dtype, data["captions"].tolist()
    ((2, 4, 4, 1), dtype('int64'), ['a', 'b'])
    """
    out = Path(out_dir)
    images = np.asarray(images, dtype=np.uint8)
    labels_array = np.asarray(list(labels), dtype=np.int64)
    # a string array, so that readers never need pickle (np.load(..., allow_pickle=False) reads it)
    captions_array = np.array([str(c) for c in captions], dtype=np.str_).reshape(len(captions))
    if not len(images) == len(labels_array) == len(captions_array):
        raise ValueError(f"{len(images)} images, {len(labels_array)} labels and {len(captions_array)} captions differ")
    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels_array, captions=captions_array)
    atomic_write_bytes(out / "images.npz", buffer.getvalue())
    upscale = max(1, 64 // images.shape[1])
    save_grid(images, out / "grid.png", nrow=nrow, upscale=upscale, title=grid_title(info or {}),
              column_labels=column_labels(labels_array.tolist(), list(captions_array), nrow, class_names))
    write_json(out / "info.json", {"num_images": len(images), **(info or {})})
    return out


def grid_title(info: dict) -> str:
    """The title of a sample grid from its ``info.json`` settings.

    Examples
    --------
    >>> grid_title({"guidance_scale": 3.0, "sampler": "dpm_solver", "num_steps": 50, "step": 1500})
    'guidance 3 - dpm_solver, 50 steps - training step 1500'
    """
    parts = []
    if info.get("guidance_scale") is not None:
        control = info.get("control_guidance")
        parts.append(f"guidance {float(info['guidance_scale']):g}" + (f", control {control:g}" if control else ""))
    if info.get("sampler"):
        parts.append(f"{info['sampler']}, {info.get('num_steps')} steps")
    if info.get("step") is not None:
        parts.append(f"training step {info['step']}")
    return " - ".join(parts)


def column_labels(
    labels: Sequence[int], captions: Sequence[str], nrow: int | None, class_names: Sequence[str] | None = None
) -> list[str] | None:
    """One label per grid column when every image of a column shares it: the class (its name when known), else
    the column's one prompt; None when the columns are mixed (or the grid is square).

    Examples
    --------
    >>> column_labels([0, 1, 0, 1], ["a", "b", "c", "d"], 2, ["zero", "one"])
    ['zero', 'one']
    >>> column_labels([-1, -1], ["a red cat", "a dog"], 2), column_labels([-1, -1], ["a", "b"], None)
    (['a red cat', 'a dog'], None)
    """
    if not nrow:
        return None
    found = []
    for column in range(min(nrow, len(labels))):
        classes, prompts = set(labels[column::nrow]), set(captions[column::nrow])
        if len(classes) == 1 and min(classes) >= 0:
            k = min(classes)
            found.append(class_names[k] if class_names and k < len(class_names) else str(k))
        elif len(prompts) == 1:
            found.append(min(prompts))
        else:
            return None
    return found


def make_eval_fn(autoencoder: ImageAutoencoder, meta: dict, samples_cfg: dict, sampler_cfg: dict):
    """The trainer's ``eval_fn(ema_task, step, run_dir)``: a class-balanced grid from the EMA weights, written to
    ``<run_dir>/samples/step_XXXXXXX/``."""

    def eval_fn(ema_task, step: int, run_dir: Path) -> dict:
        start = time.perf_counter()
        classes = len(sampled_classes(meta))
        num_images = int(samples_cfg.get("num_per_class", 8)) * classes if classes else int(samples_cfg.get("num", 64))
        request = balanced_request(meta, num_images, meta.get("sample_control"))
        settings = {
            "sampler": sampler_cfg.get("name", "ddim"),
            "num_steps": int(sampler_cfg.get("num_steps", 50)),
            "guidance_scale": float(samples_cfg.get("guidance_scale", 1.0)),
            "control_guidance": sampler_cfg.get("control_guidance"),
            "eta": float(sampler_cfg.get("eta", 0.0)),
            "seed": int(samples_cfg.get("seed", 0)),
        }
        images = generate(ema_task, autoencoder, request, latent_shape=meta["latent_shape"],
                          batch_size=int(samples_cfg.get("batch_size", 128)), **settings)
        out = Path(run_dir) / "samples" / f"step_{step:07d}"
        write_samples(out, images, request.labels.tolist(), request.captions, {"step": step, **settings},
                      nrow=grid_columns(meta), class_names=meta.get("class_names"))
        return {"sample_seconds": time.perf_counter() - start}

    return eval_fn
