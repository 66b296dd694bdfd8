"""One trainer for every recipe, on ``accelerate``: CPU, one GPU, many GPUs or nodes with the same code.

A recipe hands the trainer a *task module*: an ``nn.Module`` whose ``forward(batch, rng)`` returns a dict of named
:class:`LossTerm` (per-sample values) and, optionally, plain tensors to log. The trainer owns everything else:
data order, per-step randomness, the one batch mean, mixed precision, gradient clipping, EMA, non-finite steps,
checkpoints, resume, metrics and progress.

Exact resume: the data order is a function of ``(seed, epoch)`` (:class:`EpochSampler`), the step's randomness
of ``(seed, step)`` (:class:`~robust_gen.diffusion.randomness.BatchGenerator`), and the checkpoint holds model,
EMA, optimizer and LR schedule, so a run restarted from a checkpoint follows the path the uninterrupted run
would have taken.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.export
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from robust_gen.diffusion.ema import EMA, averaged_weights, warmup_horizon
from robust_gen.diffusion.objective import batch_mean
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.training.checkpoint import (
    UnverifiedCheckpointsError,
    find_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from robust_gen.training.data import EpochSampler
from robust_gen.training.interrupt import StopRequested, handle_stop_signals, signal_name
from robust_gen.training.metrics import MetricsLogger
from robust_gen.training.run_dir import lock_run, set_run_aside, write_json
from robust_gen.training.sample_losses import SampleLossRecord
from robust_gen.training.settings import SETTING_RULES, Rule, changed_settings, check_settings, check_value
from robust_gen.training.sharding import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
    shard_module,
)

__all__ = [
    "COMPILE_MODES", "LossTerm", "NonFiniteLossError", "Trainer", "TrainerConfig", "compile_in_place", "run_on_cpu",
]

log = logging.getLogger(__name__)

#: ``torch.compile`` modes (inductor only); ``None`` is inductor's ``"default"``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class LossTerm:
    """One term of the training loss: per-sample values, optional per-sample weights for the batch mean.

    The total loss is ``sum(scale * batch_mean(values, weights))`` over the terms.
    """

    values: torch.Tensor
    weights: torch.Tensor | None = None
    scale: float = 1.0


# A pytree node, so that code walking a task's outputs finds the tensors inside: FSDP2 hooks the backward of a
# sharded module through the tensors of its outputs, and without this the root unit's weights were freed before
# the backward reached them (a task returns {"name": LossTerm}).
torch.export.register_dataclass(LossTerm)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainerConfig:
    """Training settings (the ``trainer`` config group).

    ``batch_size`` is the global batch of one forward pass: with N processes each sees ``batch_size / N``.
    One optimizer step sees ``batch_size * grad_accum`` samples.

    GPU throughput options (all off by default, none changes what is trained): ``compile`` runs the task module
    through ``torch.compile`` (``compile_backend``, ``compile_mode``; see :func:`compile_in_place`);
    ``channels_last`` stores 4-D weights in NHWC order, which cuDNN's tensor-core convolution kernels prefer.

    ``fsdp`` shards weights, gradients and optimizer state over the processes (FSDP2, see
    :mod:`robust_gen.training.sharding`), each module class named in ``fsdp_wrap`` its own unit; checkpoints
    keep the full weights, so sharded and unsharded runs resume from each other's model and EMA weights.

    Examples
    --------
    >>> TrainerConfig(compile=True, compile_backend="eager").compile_backend
    'eager'
    >>> TrainerConfig(compile_mode="fastest")
    Traceback (most recent call last):
    ...
    ValueError: trainer.compile_mode must be null or one of ('default', ...), got 'fastest'
    >>> TrainerConfig(log_every=0)
    Traceback (most recent call last):
    ...
    ValueError: trainer.log_every must be an integer >= 1, got 0
    """

    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_warmup_steps: int | None = None
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int = 0
    num_workers: int = 0
    max_nonfinite_steps: int = 20
    tensorboard: bool = True
    progress: bool = True
    deterministic: bool = False
    cpu: bool = False
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    channels_last: bool = False
    fsdp: bool = False
    fsdp_wrap: list[str] = field(default_factory=list)
    #: When the run directory's checkpoints cannot be resumed (none verifies, or they were trained with other
    #: settings), start over at step 0 and move them (and metrics.jsonl) aside to ``checkpoints.replaced-<time>/``,
    #: never deleting them. Resumable checkpoints are resumed anyway, so a re-queued command keeps its progress.
    restart: bool = False
    #: A finished run re-run with the same command does nothing; ``resample=true`` runs the end-of-training
    #: sampling / evaluation hook again.
    resample: bool = False
    #: Record every sample's loss per epoch (``sample_losses.safetensors``, read by ``tools/audit.py``).
    track_sample_losses: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self, SETTING_RULES, "trainer")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"trainer.mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        betas = list(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else [self.adam_betas]
        if len(betas) != 2:
            raise ValueError(f"trainer.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        beta_rule = Rule("float", 0, 1, open_high=True)
        self.adam_betas = tuple(check_value(f"trainer.adam_betas[{i}]", b, beta_rule) for i, b in enumerate(betas))
        warmup_horizon(self.ema_decay, self.ema_warmup_steps)  # a bad ema_warmup_steps fails here, not at step 1
        self._check_compile_settings()
        if isinstance(self.fsdp_wrap, str) or not all(isinstance(name, str) for name in self.fsdp_wrap):
            raise ValueError(
                f"trainer.fsdp_wrap must be a list of module class names, e.g. [BasicTransformerBlock], got "
                f"{self.fsdp_wrap!r}"
            )
        self.fsdp_wrap = list(self.fsdp_wrap)
        if self.fsdp and self.mixed_precision == "fp16":
            raise ValueError("trainer.fsdp=true supports mixed_precision no or bf16 (fp16's loss scaler does not "
                             "unscale sharded gradients); use bf16")

    def _check_compile_settings(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"trainer.compile_mode must be null or one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(f"trainer.compile_backend must name a torch.compile backend, got {self.compile_backend!r}")
        if self.compile_mode is not None and self.compile_backend != "inductor":
            # torch.compile would only warn and ignore the mode: a setting that silently does nothing.
            raise ValueError(
                f"trainer.compile_mode={self.compile_mode!r} is an inductor setting but compile_backend="
                f"{self.compile_backend!r}; set compile_mode=null or compile_backend=inductor"
            )
        if self.compile:  # importing dynamo takes seconds: only when compiling
            import torch._dynamo

            known = torch._dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in known:
                raise ValueError(
                    f"trainer.compile_backend={self.compile_backend!r} is not a torch.compile backend; known: "
                    f"{sorted(known)} (inductor for speed; eager / aot_eager to debug)"
                )


def compile_in_place(module: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> torch.nn.Module:
    """Compile ``module``'s calls with ``torch.compile`` without wrapping it (``nn.Module.compile``).

    The module keeps its class, its attributes and its parameter names (no ``_orig_mod.`` prefix, unlike
    ``torch.compile(module)``), so checkpoints of compiled and uncompiled runs are interchangeable. Compilation
    happens lazily at the first call.

    Why not accelerate's ``Accelerator(dynamo_plugin=...)``: its dynamo settings live in the process-wide
    ``AcceleratorState``, which only the FIRST ``Accelerator`` of a process sets, so a second trainer in the same
    process (tests, sweeps, notebooks) silently keeps the first one's choice; and it wraps the model in an
    ``OptimizedModule`` whose ``unwrap_model`` keeps the wrapper and the ``_orig_mod.`` names by default.

    Examples
    --------
    >>> net = compile_in_place(torch.nn.Linear(2, 2), backend="eager")
    >>> sorted(net.state_dict()), type(net).__name__, net(torch.ones(1, 2)).shape
    (['bias', 'weight'], 'Linear', torch.Size([1, 2]))
    """
    module.compile(backend=backend, mode=mode)
    return module


def run_on_cpu(requested: bool = False) -> bool:
    """Whether accelerate must be told ``cpu=True``: when asked, and when several processes were launched
    (``WORLD_SIZE`` > 1) on a machine without CUDA. Without it accelerate sets up N independent one-process runs
    there, all writing the same run directory; with it they train together over gloo.

    Examples
    --------
    >>> run_on_cpu(True)
    True
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return bool(requested) or (launched and not torch.cuda.is_available())


class Trainer:
    """Train a task module on a dataset, writing everything into ``run_dir``.

    Parameters
    ----------
    task:
        ``nn.Module`` with ``forward(batch, rng) -> dict[str, LossTerm | Tensor]``.
    dataset:
        A map-style dataset; if it has ``set_epoch(epoch)`` the trainer calls it at each epoch (for corruption
        re-drawn every epoch).
    config:
        :class:`TrainerConfig`.
    run_dir:
        The run directory (see :mod:`robust_gen.training.run_dir`).
    collate_fn:
        Batch collation (``torch.utils.data.default_collate`` when None).
    config_yaml:
        The resolved config, stored in every checkpoint.
    eval_fn:
        Optional ``eval_fn(ema_module, step, run_dir) -> dict`` run on the main process every ``eval_every``
        steps and at the end (sampling, metrics); its numbers go to the metrics log.
    """

    def __init__(
        self,
        task: torch.nn.Module,
        dataset: Dataset,
        config: TrainerConfig,
        run_dir: str | Path,
        *,
        collate_fn: Callable | None = None,
        config_yaml: str | None = None,
        eval_fn: Callable[[torch.nn.Module, int, Path], dict] | None = None,
    ) -> None:
        self.task, self.dataset, self.cfg = task, dataset, config
        self.run_dir = Path(run_dir)
        self.collate_fn, self.config_yaml, self.eval_fn = collate_fn, config_yaml, eval_fn
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._eval_module: torch.nn.Module | None = None
        self.sample_losses: SampleLossRecord | None = None  # trainer.track_sample_losses (sample_losses.py)

    # ----------------------------------------------------------------------------------------------- set-up
    def _build(self) -> None:
        cfg = self.cfg
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            cpu=run_on_cpu(cfg.cpu),
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise RuntimeError(
                f"{launched} processes were launched (WORLD_SIZE) but accelerate set up "
                f"{self.accelerator.num_processes}: an accelerate state created earlier in this process with other "
                f"settings? Create it with PartialState(cpu=run_on_cpu(cfg.trainer.cpu)) as the recipes do"
            )
        if cfg.batch_size % self.accelerator.num_processes:
            raise ValueError(
                f"trainer.batch_size={cfg.batch_size} must be divisible by the number of processes "
                f"({self.accelerator.num_processes})"
            )
        self.sampler = EpochSampler(len(self.dataset), seed=cfg.seed)
        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            pin_memory=self.accelerator.device.type == "cuda",
            drop_last=len(self.dataset) >= cfg.batch_size,
            # Not persistent: workers hold copies of the dataset, and what set_epoch changes (corruption re-drawn
            # each epoch, augmentation) must reach them; fresh workers each epoch copy the updated dataset.
            persistent_workers=False,
        )
        if cfg.channels_last:
            # NHWC weights: cuDNN's tensor-core convolutions work in channels-last order, so NCHW weights cost a
            # layout transform around every convolution (and its backward). Only 4-D tensors change (a no-op
            # for linear layers, embeddings and 1-D convolutions); later copies (device move, EMA, a loaded
            # checkpoint's values) keep the layout. Before the optimizer is built, so it holds the final tensors.
            self.task.to(memory_format=torch.channels_last)
        if cfg.fsdp:
            self._shard_task()  # before the optimizer, which must hold the sharded parameters
        params = [p for p in self.task.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the task module has no trainable parameters")
        fused = self.accelerator.device.type == "cuda"
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, fused=fused or None
        )
        warmup = max(cfg.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        if cfg.fsdp:  # already sharded: accelerate must not wrap it in DDP as well
            self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(optimizer, loader, scheduler)
            self.model = self.task
        else:
            self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
                self.task, optimizer, loader, scheduler
            )
            self.ema = EMA(self.accelerator.unwrap_model(self.model), decay=cfg.ema_decay, warmup=cfg.ema_warmup,
                           warmup_steps=cfg.ema_warmup_steps)
        if cfg.compile:
            # After the EMA copy, which stays uncompiled: it only runs in evaluation, at other batch sizes, where
            # compiling would cost recompilations for nothing. The task inside any DDP wrapper is compiled in
            # place; DDP calls it as before, and checkpoints keep the plain parameter names.
            compile_in_place(self.accelerator.unwrap_model(self.model), cfg.compile_backend, cfg.compile_mode)

    def _shard_task(self) -> None:
        cfg = self.cfg
        self.task.to(self.accelerator.device)
        if self.eval_fn is not None and self.is_main:
            # A sharded module cannot run a forward on the main process alone, and evaluation runs there only:
            # a plain copy (kept on the CPU between evaluations) receives the gathered EMA weights.
            self._eval_module = copy.deepcopy(self.task).cpu().eval().requires_grad_(False)
        # The EMA copy is made before sharding (FSDP modules cannot be deep-copied) and sharded the same way, so
        # each process averages only its own shard: no communication per step, 1/N of the memory.
        self.ema = EMA(self.task, decay=cfg.ema_decay, warmup=cfg.ema_warmup,
                       warmup_steps=cfg.ema_warmup_steps)
        shard_module(self.task, cfg.fsdp_wrap)
        shard_module(self.ema.module, cfg.fsdp_wrap)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "nonfinite_total": self.nonfinite_total,
            "trainer_config": asdict(self.cfg),
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main process; all processes wait for it).

        Weights that are no longer finite (an optimizer step too large for them) are never saved as a state to
        resume from: :class:`NonFiniteLossError` names the newest good checkpoint instead.
        """
        self.accelerator.wait_for_everyone()
        if not self._weights_finite():
            kept = find_checkpoints(self.run_dir / "checkpoints")
            raise NonFiniteLossError(
                f"the weights are no longer finite at step {self.step} (NaN or inf after an optimizer step), so no "
                f"checkpoint was written; the newest good one is {kept[0] if kept else 'none'}. "
                f"{self._nonfinite_fix()}"
            )
        path = None
        # Gathering a sharded model's full weights is a collective: every process takes part, the main one writes.
        model = self.accelerator.unwrap_model(self.model)
        tensors = {"model": full_model_state(model), "ema": self._ema_state()}
        optimizer_state = full_optimizer_state(model, self.optimizer.optimizer)
        if self.is_main:
            path = save_checkpoint(
                self.run_dir / "checkpoints",
                self.step,
                tensors=tensors,
                objects={"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict()},
                state=self._state(),
                config_yaml=self.config_yaml,
                keep=self.cfg.keep_checkpoints,
            )
            if self.sample_losses is not None:  # saved with each checkpoint, so a resume continues it in step
                self.sample_losses.save(self.run_dir)
        self.accelerator.wait_for_everyone()
        return path

    def _resume(self) -> bool:
        """Load the newest valid checkpoint. Checkpoints that cannot be resumed (none verifies, or trained with
        other settings) stop the run, or with ``trainer.restart=true`` are moved aside for a fresh start; resumable
        ones are resumed either way, so a re-queued command with ``restart=true`` does not start over again."""
        try:
            ckpt, unusable = load_latest_checkpoint(self.run_dir / "checkpoints", map_location="cpu"), None
        except UnverifiedCheckpointsError as error:
            ckpt, unusable = None, error
        self.accelerator.wait_for_everyone()  # every process has read the folder before anything is moved
        changes = []
        if ckpt is not None:
            changes = changed_settings({"trainer": ckpt.state.get("trainer_config", {})}, {"trainer": asdict(self.cfg)})
        if unusable is None and not changes:
            return self._load_state(ckpt) if ckpt is not None else False
        if not self.cfg.restart:
            if unusable is not None:
                raise unusable
            raise ValueError(
                f"{self.run_dir} was trained with other settings than this command's: {'; '.join(changes)}. Resuming "
                "would mix them (and the run directory would record values its weights were not trained with). "
                "Put the old values back to resume, or start over with trainer.restart=true (old checkpoints are "
                "kept aside), or train into a new run directory"
            )
        if self.is_main:
            set_run_aside(self.run_dir, "no checkpoint verifies" if unusable is not None else "other settings")
        self.accelerator.wait_for_everyone()
        return False

    def _load_state(self, ckpt) -> bool:
        model = self.accelerator.unwrap_model(self.model)
        optimizer_state = ckpt.objects["optimizer"]
        # sharded runs key the optimizer state by parameter name, unsharded ones (torch's format) by index
        keys = list(optimizer_state.get("state", {}))
        if keys and isinstance(keys[0], str) != is_sharded(model):
            raise ValueError(
                f"the checkpoint {ckpt.path} was written with trainer.fsdp={not self.cfg.fsdp}: resume with that "
                f"setting (its optimizer state is stored per parameter name when sharded), or start a new run "
                f"from its weights"
            )
        load_full_model_state(model, ckpt.tensors["model"])
        self._load_ema_state(ckpt.tensors["ema"])
        load_full_optimizer_state(model, self.optimizer.optimizer, optimizer_state)
        self.scheduler.load_state_dict(ckpt.objects["scheduler"])
        self.step = ckpt.step
        self.epoch = int(ckpt.state["epoch"])
        self.batch_in_epoch = int(ckpt.state["batch_in_epoch"])
        self.nonfinite_total = int(ckpt.state.get("nonfinite_total", 0))
        log.info("resumed from %s (step %d, epoch %d, batch %d)", ckpt.path, self.step, self.epoch, self.batch_in_epoch)
        return True

    def _ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA's state dict in :class:`EMA`'s own format, gathered to full tensors when sharded."""
        if not is_sharded(self.ema.module):
            return self.ema.state_dict()
        state = {f"module.{k}": v for k, v in full_model_state(self.ema.module).items()}
        return {**state, "n_averaged": self.ema.n_averaged.detach().cpu()} if state else {}

    def _load_ema_state(self, state: dict[str, torch.Tensor]) -> None:
        if not is_sharded(self.ema.module):
            self.ema.load_state_dict(state)
            return
        load_full_model_state(self.ema.module, averaged_weights(state))
        self.ema.n_averaged.copy_(state["n_averaged"])

    # --------------------------------------------------------------------------------------------- training
    def _total_loss(self, terms: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, logged = None, {}
        for name, term in terms.items():
            if isinstance(term, LossTerm):
                weight_total = None
                if term.weights is not None and self.accelerator.num_processes > 1:
                    # Element-weighted means must divide by the GLOBAL weight, or shards with short samples
                    # would count for more than one process would let them.
                    global_sum = self.accelerator.reduce(term.weights.detach().sum(), reduction="sum")
                    weight_total = global_sum / self.accelerator.num_processes
                value = batch_mean(term.values, term.weights, weight_total=weight_total)
                total = term.scale * value if total is None else total + term.scale * value
                logged[f"loss/{name}"] = value.detach()
            else:
                logged[name] = term.detach().float().mean()
        if total is None:
            raise ValueError("the task returned no LossTerm; at least one term must make up the loss")
        logged["loss"] = total.detach()
        return total, logged

    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.tensor(float(torch.isfinite(value).all()), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="min") > 0)

    def _handle_stop_signal(self, signum, frame) -> None:  # preemption or Ctrl-C: finish the step, checkpoint, stop
        self._stop_requested = True
        self._stop_signal = signum

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (resuming from the newest valid checkpoint), then return a summary.

        A run already at ``max_steps`` does nothing (``trainer.resample=true`` runs the evaluation hook again).
        On SIGTERM or SIGINT the current step ends, a checkpoint is written and :class:`StopRequested` is raised.
        """
        self._build()
        with lock_run(self.run_dir) if self._is_local_main() else contextlib.nullcontext():
            return self._fit()

    def _is_local_main(self) -> bool:
        return self.accelerator.is_local_main_process

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        resumed = self._resume()
        if cfg.track_sample_losses:
            self.sample_losses = SampleLossRecord.resume(self.run_dir)
        if resumed and self.step >= cfg.max_steps:
            return self._already_complete(cfg)
        metrics = (
            MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, resume_step=self.step if resumed else None)
            if self.is_main
            else None
        )
        progress = tqdm(
            total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.is_main), desc="train",
            dynamic_ncols=True,
        )
        window: dict[str, list[float]] = {}
        window_start, window_samples = time.perf_counter(), 0
        last: dict[str, float] = {}
        try:
            with handle_stop_signals(self._handle_stop_signal):
                while self.step < cfg.max_steps and not self._stop_requested:
                    if hasattr(self.dataset, "set_epoch"):
                        self.dataset.set_epoch(self.epoch)
                    loader = self.loader
                    if self.batch_in_epoch:
                        loader = self.accelerator.skip_first_batches(self.loader, self.batch_in_epoch)
                    # accelerate's loaders re-set the sampler's epoch from their own iteration counter when
                    # iterated (and a skipping loader starts that counter at 0): set it through the loader, every
                    # epoch.
                    loader.set_epoch(self.epoch)
                    for batch in loader:
                        self.batch_in_epoch += 1
                        stepped, logged = self._train_micro_batch(batch)
                        window_samples += cfg.batch_size
                        for k, v in logged.items():
                            window.setdefault(k, []).append(float(v))
                        if not stepped:
                            continue
                        progress.update(1)
                        if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                            elapsed = time.perf_counter() - window_start
                            last = {k: sum(v) / len(v) for k, v in window.items()}
                            last.update(
                                lr=self.scheduler.get_last_lr()[0],
                                samples_per_s=window_samples / max(elapsed, 1e-9),
                                epoch=self.epoch,
                                nonfinite_total=self.nonfinite_total,
                            )
                            if metrics is not None:
                                metrics.log(self.step, last)
                            progress.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")
                            window, window_start, window_samples = {}, time.perf_counter(), 0
                        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                            self.save()
                        if self.eval_fn and cfg.eval_every and self.step % cfg.eval_every == 0:
                            self._evaluate(metrics)
                        if self.step >= cfg.max_steps or self._stop_requested:
                            break
                    else:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                progress.close()  # before any message, so that none lands on the progress bar's line
                self.save()
                if not self._stop_requested and self.eval_fn:
                    self._evaluate(metrics)
        finally:
            progress.close()
            if metrics is not None:
                metrics.close()
        summary = {
            "step": self.step,
            "epoch": self.epoch,
            "nonfinite_total": self.nonfinite_total,
            "num_processes": self.accelerator.num_processes,
            "device": str(self.accelerator.device),
            "status": "complete" if not self._stop_requested else f"stopped ({signal_name(self._stop_signal)})",
            **last,
        }
        if self.is_main:
            write_json(self.run_dir / "summary.json", summary)
        if self._stop_requested:
            raise StopRequested(self._stop_signal, step=self.step)
        return summary

    def _already_complete(self, cfg: TrainerConfig) -> dict[str, Any]:
        """A finished run re-run: say so and do nothing (or only re-run the evaluation hook when asked)."""
        previous = self.run_dir / "summary.json"
        try:
            summary = json.loads(previous.read_text()) if previous.is_file() else {}
        except ValueError:
            summary = {}
        summary.update(step=self.step, status="complete")
        if cfg.resample and self.eval_fn:
            log.info("run %s is complete at step %d: sampling again (trainer.resample=true)", self.run_dir, self.step)
            metrics = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, resume_step=self.step) \
                if self.is_main else None
            try:
                self._evaluate(metrics)
            finally:
                if metrics is not None:
                    metrics.close()
        else:
            log.info(
                "run %s is already complete at step %d (trainer.max_steps=%d): nothing to do. Raise trainer.max_steps "
                "to train on, or add trainer.resample=true to sample again", self.run_dir, self.step, cfg.max_steps,
            )
        return summary

    def _train_micro_batch(self, batch) -> tuple[bool, dict[str, torch.Tensor]]:
        """One forward/backward; returns whether an optimizer step was taken, and what to log."""
        acc, cfg = self.accelerator, self.cfg
        micro = self.step * cfg.grad_accum + (self.batch_in_epoch - 1) % cfg.grad_accum
        rng = BatchGenerator(
            cfg.seed, micro, shard_index=acc.process_index, num_shards=acc.num_processes, device=acc.device
        )
        # a prepared (DDP or single-device) model autocasts inside its forward; a sharded one is not prepared
        autocast = acc.autocast() if cfg.fsdp else contextlib.nullcontext()
        with acc.accumulate(self.model):
            with autocast:
                terms = self.model(batch, rng)
            if self.sample_losses is not None:
                self.sample_losses.add_batch(batch, terms, self.epoch, gather=acc.gather)
            loss, logged = self._total_loss(terms)
            finite = self._all_finite(loss.detach())
            if finite:
                acc.backward(loss)
            if not acc.sync_gradients:
                return False, logged
            grad_norm = None
            if finite:
                params = [p for p in self.model.parameters() if p.requires_grad]
                if cfg.grad_clip:
                    grad_norm = acc.clip_grad_norm_(params, cfg.grad_clip)
                elif cfg.fsdp:  # the norm over sharded gradients needs torch's DTensor-aware reduction
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, math.inf)
                else:
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in params if p.grad is not None])
                    )
                if isinstance(grad_norm, DTensor):
                    grad_norm = grad_norm.full_tensor()
                finite = bool(torch.isfinite(grad_norm))
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                self._count_nonfinite()
                return False, {}
            self.nonfinite_in_row = 0
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(acc.unwrap_model(self.model))
        if grad_norm is not None:
            logged["grad_norm"] = grad_norm.detach().float()
        return True, {k: acc.reduce(v.float().to(acc.device), reduction="mean") for k, v in logged.items()}

    def _count_nonfinite(self) -> None:
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        log.warning(
            "non-finite loss or gradient at step %d: step skipped (%d in a row, %d in total)",
            self.step, self.nonfinite_in_row, self.nonfinite_total,
        )
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
            path = self.save()  # raises instead when the weights themselves are no longer finite
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} consecutive steps had a non-finite loss or gradient (limit "
                f"trainer.max_nonfinite_steps={self.cfg.max_nonfinite_steps}); the last state, with finite weights, "
                f"is saved at {path}. {self._nonfinite_fix()}"
            )

    def _nonfinite_fix(self) -> str:
        return (f"Lower trainer.lr (now {self.cfg.lr:g}), check the data for NaN/inf, or disable mixed precision "
                "(trainer.mixed_precision=no), then start over with trainer.restart=true or a new run directory: "
                "resuming with the same settings fails the same way")

    def _weights_finite(self) -> bool:
        model = self.accelerator.unwrap_model(self.model)
        # a sharded parameter is a DTensor: each process checks its own shard, the reduction combines them
        local = all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in
                    (q.detach() for q in model.parameters()))
        flag = torch.tensor(float(local), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="min") > 0)

    def _evaluate(self, metrics: MetricsLogger | None) -> None:
        self.accelerator.wait_for_everyone()
        module = self.ema.module
        if is_sharded(module):
            weights = full_model_state(module)  # a collective: every process gathers, the main one receives
            if self.is_main:
                module = self._eval_module
                module.load_state_dict(weights)
                module.to(self.accelerator.device)
        if self.is_main:
            results = self.eval_fn(module, self.step, self.run_dir) or {}
            numeric = {k: v for k, v in results.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            if metrics is not None and numeric:
                metrics.log(self.step, {f"eval/{k}": v for k, v in numeric.items()})
            if module is self._eval_module:
                module.cpu()  # the device memory belongs to training
        self.accelerator.wait_for_everyone()
