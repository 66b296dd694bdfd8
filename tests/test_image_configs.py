"""Every config file in configs/image composes, and what it describes instantiates (big models on the meta device)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from robust_gen.diffusion.schedules import DiscreteVP
from robust_gen.image.build import build_source, fill_from_data
from robust_gen.image.data.dataset import CONTROL_NAMES
from robust_gen.image.model.autoencoder import _build_small
from robust_gen.image.model.conditioners import build_conditioner
from robust_gen.image.model.denoiser import build_denoiser, count_parameters
from robust_gen.image.model.pretrained import configure_pretrained
from robust_gen.image.sampling import get_image_sampler
from robust_gen.training.recipe import CONFIG_ROOT, compose_config, register_resolvers, trainer_config

register_resolvers()
IMAGE = CONFIG_ROOT / "image"
TRAIN_GROUPS = {"data", "autoencoder", "model", "condition", "control", "cep", "sampler"}
GROUP_FILES = sorted(p for p in IMAGE.glob("*/*.yaml") if p.parent.name in TRAIN_GROUPS)
# Parameter counts the configs are meant to reproduce (millions): LDM-4 ~400M, DiT-XL/2-sized PixArt ~600M.
EXPECTED_MILLIONS = {"unet_tiny": (0.5, 2), "unet_small": (10, 40), "ldm4": (380, 420), "dit_tiny": (0.05, 1),
                     "dit_xl2": (550, 700), "pretrained": (0.1, 0.5)}  # pretrained: the tiny test pipeline
LATENT = {"ldm4": (3, 64), "dit_xl2": (4, 32), "unet_small": (4, 16)}


def _compose(name: str, overrides: list[str]):
    return compose_config("image", name, overrides)


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    for name in ("a", "b"):
        (root / "folder" / name).mkdir(parents=True)
        Image.new("RGB", (12, 12), "red").save(root / "folder" / name / "0.png")
    (root / "t.csv").write_text("image,caption\nfolder/a/0.png,a red square\nfolder/b/0.png,another red square\n")
    return {"folder": f"data.root={root / 'folder'}", "table": f"data.table={root / 't.csv'}"}


def test_every_training_group_has_options():
    assert {p.parent.name for p in GROUP_FILES} == TRAIN_GROUPS
    assert len(GROUP_FILES) == 5 + 4 + 6 + 3 + 3 + 3 + 4


# options that read a pretrained pipeline (model=pretrained selects the pipeline's VAE and text encoder)
PIPELINE_OPTIONS = {("model", "pretrained"), ("autoencoder", "pipeline"), ("condition", "pipeline")}


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_option_composes_and_instantiates(path: Path, local_data, tiny_pipeline_dir):
    group, option = path.parent.name, path.stem
    overrides = [f"{group}={option}", "data.limit=4", "data.resolution=16"]
    if group == "data" and option in local_data:
        overrides.append(local_data[option])
    if group == "data" and option == "concept":
        overrides += [local_data["folder"], "data.concept=b"]
    pretrained = (group, option) in PIPELINE_OPTIONS
    if pretrained:
        overrides += ["model=pretrained", f"model.path={tiny_pipeline_dir}"]
    cfg = _compose("train", overrides)
    if pretrained:
        configure_pretrained(cfg)  # schedule, prediction and the cross-attention width from the pipeline
    OmegaConf.to_yaml(cfg, resolve=True)  # every interpolation resolves
    assert isinstance(instantiate(cfg.schedule), DiscreteVP)
    assert callable(instantiate(cfg.loss)) and trainer_config(cfg.trainer).max_steps >= 1
    if group == "data":
        if option == "hf" and importlib.util.find_spec("datasets") is None:
            with pytest.raises(ImportError, match="datasets"):
                build_source(cfg.data)
            return
        source = build_source(cfg.data)
        assert source.images.shape[1] == 16 and source.channels == cfg.data.channels
        fill_from_data(cfg, source)
    elif group == "model" and pretrained:
        net = build_denoiser(OmegaConf.to_container(cfg.model, resolve=True), routing="none", control_cfg={},
                             schedule=instantiate(cfg.schedule), in_channels=4, sample_size=8,
                             context_dim=cfg.model.cross_attention_dim, control_names=CONTROL_NAMES)
        low, high = EXPECTED_MILLIONS[option]
        assert low <= count_parameters(net) / 1e6 <= high and count_parameters(net, trainable_only=True) < 1e4
    elif group == "model":
        channels, size = LATENT.get(option, (4, 8))
        with torch.device("meta"):  # LDM-4 / DiT-XL/2 are built without allocating their weights
            net = build_denoiser(OmegaConf.to_container(cfg.model, resolve=True), routing="none", control_cfg={},
                                 schedule=instantiate(cfg.schedule), in_channels=channels, sample_size=size,
                                 context_dim=cfg.model.cross_attention_dim, control_names=CONTROL_NAMES)
        low, high = EXPECTED_MILLIONS[option]
        assert low <= count_parameters(net) / 1e6 <= high
    elif group == "control":
        net = build_denoiser(OmegaConf.to_container(_compose("train", ["model=dit_tiny"]).model), routing=cfg.control.mode,
                             control_cfg=OmegaConf.to_container(cfg.control), schedule=instantiate(cfg.schedule),
                             in_channels=4, sample_size=8, context_dim=64, control_names=CONTROL_NAMES)
        assert (net.control_embedding is None) == (option == "none")
    elif group == "condition":
        conditioner = build_conditioner(OmegaConf.to_container(cfg.condition, resolve=True), num_classes=10,
                                        dim=cfg.model.cross_attention_dim)
        assert conditioner.null(2).tokens.shape[-1] == cfg.model.cross_attention_dim
    elif group == "autoencoder" and option == "trained":
        model = _build_small(cfg.autoencoder.kind, OmegaConf.to_container(cfg.autoencoder.model), 1, 32)
        assert model.config.latent_channels == 4 and len(model.config.block_out_channels) == 3  # 32x32 -> 8x8x4
    elif group == "autoencoder" and pretrained:
        assert cfg.autoencoder.mode == "pretrained" and cfg.autoencoder.path == str(tiny_pipeline_dir)
    elif group == "autoencoder":
        assert cfg.autoencoder.mode == option
    elif group == "cep":
        assert cfg.cep.kind in ("none", "uniform", "gaussian")
    elif group == "sampler":
        assert callable(get_image_sampler(cfg.sampler.name)) and cfg.sampler.num_steps >= 1


@pytest.mark.parametrize("corruption", ["none", "label_flip", "caption_swap", "outliers"])
def test_shared_corruptions_fill_from_the_digits(corruption):
    cfg = _compose("train", [f"corruption={corruption}", "data.limit=40", "data.resolution=8"])
    fill_from_data(cfg, build_source(cfg.data))
    corruption_object = instantiate(cfg.corruption)
    assert corruption_object.kind in ("none", "label_flip", "caption_swap", "outliers")
    if corruption == "label_flip":
        assert cfg.corruption.num_classes == 10
    if corruption == "outliers":
        assert cfg.corruption.concept == 0


def test_train_config_hydra_settings_and_sample_config():
    text = (IMAGE / "train.yaml").read_text()
    assert "file://${oc.env:ROBUST_GEN_CONFIGS}/shared" in text
    assert "runs/image/${rg.run_name:${hydra:job.override_dirname}}" in text
    import yaml

    excluded = yaml.safe_load(text)["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    # settings that do not change what is trained never rename the run (re-running with them resumes it)
    assert set(excluded) == {"trainer.max_steps", "trainer.progress", "trainer.restart", "trainer.resample",
                             "hydra.run.dir", "finish.sample", "finish.evaluate"}
    sample = _compose("sample", ["run_dir=/tmp/some_run"])
    assert sample.sampler.name == "dpm_solver" and list(sample.guidance_scales) == [1.0, 3.0]
