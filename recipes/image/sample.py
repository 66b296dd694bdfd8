"""Sample a trained image run with classifier-free guidance, for looking at and for evaluation.

    python recipes/image/sample.py run_dir=runs/image/default
    python recipes/image/sample.py run_dir=runs/image/default sampler=ddim sampler.num_steps=50 \
        guidance_scales=[1.0,1.5,3.0,5.0] num_images=1000

Per guidance scale this writes <run_dir>/samples/<sampler><steps>_g<scale>/images.npz (images uint8 [N, H, W, C],
labels int64 [N] balanced over the classes or -1, captions a string array), grid.png and info.json.
"""

from __future__ import annotations

from robust_gen.launch import start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="image/sample")

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from robust_gen.image.build import load_run
from robust_gen.image.sampling import balanced_request, generate, grid_columns, write_samples
from robust_gen.training.entry import recipe_main
from robust_gen.training.recipe import register_resolvers

register_resolvers()
log = logging.getLogger("recipes.image.sample")


def sample(cfg: DictConfig) -> list[str]:
    """Write one sample folder per guidance scale of ``cfg``; returns the folders."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    task, autoencoder, meta, _ = load_run(cfg.run_dir, checkpoint=cfg.checkpoint, weights=cfg.weights, device=device)
    control = OmegaConf.to_container(cfg.control_values) if cfg.control_values is not None else meta["sample_control"]
    request = balanced_request(meta, int(cfg.num_images), control if task.denoiser.routing != "none" else None)
    sampler = cfg.sampler
    scales = cfg.guidance_scales if OmegaConf.is_list(cfg.guidance_scales) else [cfg.guidance_scales]
    folders = []
    for scale in scales:
        settings = {"sampler": sampler.name, "num_steps": int(sampler.num_steps), "guidance_scale": float(scale),
                    "control_guidance": sampler.control_guidance, "eta": float(sampler.eta), "seed": int(cfg.seed)}
        images = generate(task, autoencoder, request, latent_shape=meta["latent_shape"], batch_size=int(cfg.batch_size),
                          progress=bool(cfg.progress), desc=f"sampling g={float(scale):g}", **settings)
        tag = f"{sampler.name}{int(sampler.num_steps)}_g{float(scale):g}"
        out = write_samples(f"{cfg.run_dir}/samples/{tag}", images, request.labels.tolist(), request.captions,
                            {"step": meta["step"], "weights": cfg.weights, **settings},
                            nrow=grid_columns(meta), class_names=meta.get("class_names"))
        log.info("wrote %d samples to %s", len(images), out)
        folders.append(str(out))
    return folders


@recipe_main("image", "sample", required=("run_dir",))
def main(cfg: DictConfig, output_dir) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
