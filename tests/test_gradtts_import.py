"""The Grad-TTS authors' checkpoints in GradTTS: the imported model reproduces their code's outputs.

tests/fixtures/gradtts_reference.{json,safetensors} were made once by running the authors' model code
(huawei-noah/Speech-Backbones, Grad-TTS/model) outside this project on tiny sizes: the weights are re-created here
from the seed and key list in the JSON (randn * 0.2, keys in sorted order), the inputs and their outputs are stored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robust_gen.speech.gradtts.convert import convert_state_dict, infer_config, load_authors_model
from robust_gen.speech.gradtts.model import (
    GradTTS,
    duration_loss_per_sample,
    durations_to_path,
    prior_loss_per_sample,
)

FIXTURE = Path(__file__).parent / "fixtures" / "gradtts_reference"
META = json.loads(FIXTURE.with_suffix(".json").read_text())
TENSORS = load_file(str(FIXTURE.with_suffix(".safetensors")))
TOL = 1e-5


def authors_state(tag: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(META[tag]["weight_seed"])
    return {key: torch.randn(shape, generator=generator) * 0.2 for key, shape in META[tag]["keys"]}


def _get(tag: str, name: str) -> torch.Tensor:
    return TENSORS[f"{tag}.{name}"]


@pytest.fixture(scope="module", params=["multi", "single"])
def imported(request):
    torch.manual_seed(0)
    model, config = load_authors_model(authors_state(request.param))
    return request.param, model, config


def _speakers(tag, model):
    ids = TENSORS.get(f"{tag}.speakers")
    return (ids, model.speaker_vectors(ids, 2)) if ids is not None else (None, None)


def test_sizes_read_from_the_weights(imported):
    tag, model, config = imported
    assert config["n_speakers"] == META[tag]["n_spks"] and not config["condition_encoder"]
    assert config["encoder_channels"] == 16 and config["encoder_layers"] == 2 and config["decoder_dim"] == 8
    assert sum(p.numel() for p in model.parameters()) == META[tag]["n_parameters"]


def test_encoder_outputs_and_losses_match_the_authors(imported):
    tag, model, _ = imported
    _, speaker = _speakers(tag, model)
    with torch.no_grad():
        mu_x, logw, x_mask = model.encode(_get(tag, "x"), _get(tag, "x_lengths"), speaker)
        assert torch.allclose(mu_x, _get(tag, "mu_x"), atol=TOL) and torch.allclose(logw, _get(tag, "logw"), atol=TOL)
        durations, y = _get(tag, "durations"), _get(tag, "y")
        y_mask = (torch.arange(y.shape[-1])[None] < _get(tag, "y_lengths")[:, None]).float()[:, None]
        path = durations_to_path(durations, y.shape[-1])
        mu_y = mu_x @ path
        dur = duration_loss_per_sample(logw, path.sum(-1), x_mask)
        lengths = _get(tag, "x_lengths").float()
        assert abs(float((dur * lengths).sum() / lengths.sum()) - META[tag]["duration_loss"]) < TOL
        prior = prior_loss_per_sample(y, mu_y, y_mask)
        weights = y_mask.sum(dim=(1, 2))
        assert abs(float((prior * weights).sum() / weights.sum()) - META[tag]["prior_loss"]) < TOL
        # the decoder at fixed t and noise: their score and their diffusion loss
        t, xt, z = _get(tag, "t"), _get(tag, "xt"), _get(tag, "z")
        score = model.decoder(xt, t, mu=mu_y, mask=y_mask, speaker=speaker)
        assert torch.allclose(score, _get(tag, "score"), atol=TOL)
        eps_hat = model.noise_estimate(xt, t, mu=mu_y, mask=y_mask, speaker=speaker)
        loss = ((-eps_hat + z) ** 2 * y_mask).sum() / (y_mask.sum() * model.n_feats)
        assert abs(float(loss) - META[tag]["diffusion_loss"]) < TOL


def test_synthesis_matches_the_authors_at_their_length_scale(imported):
    tag, model, _ = imported
    ids, _ = _speakers(tag, model)
    settings = META["synthesis"]
    noise = _get(tag, "synth_noise")
    original = torch.randn

    def replay(shape, *args, **kwargs):  # hands the authors' noise to synthesize's single draw
        assert tuple(shape) == tuple(noise.shape)
        return noise.clone()

    torch.randn = replay
    try:
        mel, lengths = model.synthesize(_get(tag, "x"), _get(tag, "x_lengths"), speakers=ids,
                                        n_timesteps=settings["n_timesteps"], temperature=settings["temperature"],
                                        length_scale=settings["length_scale"])
    finally:
        torch.randn = original
    expected = _get(tag, "synth_mel")
    assert int(lengths.max()) == expected.shape[-1]
    # Random weights give mels of magnitude ~50 and three large Euler steps amplify float32 rounding: the error is
    # measured against the largest value (measured: 1.7e-7 multi-speaker, 1.0e-6 single-speaker).
    error = (mel[:, :, : expected.shape[-1]] - expected).abs().max()
    assert error <= TOL * expected.abs().max()


def test_padding_free_attention_differs_only_on_padded_batches():
    state = authors_state("multi")
    exact, _ = load_authors_model(state)
    project, _ = load_authors_model(state, attention_padding="ignore")
    x, mu, t = torch.randn(2, 80, 8), torch.randn(2, 80, 8), torch.tensor([0.5, 0.5])
    speaker = exact.speaker_vectors(torch.tensor([0, 1]), 2)
    full, padded = torch.ones(2, 1, 8), torch.tensor([[1.0] * 8, [1.0] * 4 + [0.0] * 4])[:, None]
    with torch.no_grad():
        assert torch.allclose(exact.decoder(x, t, mu=mu, mask=full, speaker=speaker),
                              project.decoder(x, t, mu=mu, mask=full, speaker=speaker), atol=1e-6)
        assert not torch.allclose(exact.decoder(x, t, mu=mu, mask=padded, speaker=speaker),
                                  project.decoder(x, t, mu=mu, mask=padded, speaker=speaker), atol=1e-4)


def test_paper_size_matches_the_released_checkpoints():
    for speakers, count in META["paper_parameters"].items():
        model = GradTTS(n_speakers=int(speakers))  # the default: the encoder does not see the speaker
        assert sum(p.numel() for p in model.parameters()) == count  # 14,835,032 and 14,888,680


def test_bad_checkpoints_are_named():
    state = authors_state("single")
    with pytest.raises(KeyError, match=r"encoder\.emb\.weight"):
        infer_config({k: v for k, v in state.items() if k != "encoder.emb.weight"})
    converted = convert_state_dict(state)
    assert "decoder.mid_attention.gate" in converted and "encoder.transformer.attention.0.rel_k" in converted
    with pytest.raises(ValueError, match="unexpected"):
        load_authors_model({**state, "encoder.extra.weight": torch.zeros(1)})
    assert math.isfinite(META["single"]["diffusion_loss"])


def _load_script(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[1]


def test_import_cli_then_synthesize_and_fine_tune(tmp_path, monkeypatch, one_thread):
    from robust_gen.training.checkpoint import load_latest_checkpoint
    from robust_gen.training.recipe import compose_config, register_resolvers

    register_resolvers()
    monkeypatch.setenv("ROBUST_GEN_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "grad-tts-tiny.pt"
    torch.save(authors_state("multi"), checkpoint)  # their format: torch.save(model.state_dict())
    (tmp_path / "speakers.txt").write_text("gb_f2\nus_f1\nus_m1\n")  # the espeak data's ids (sorted names)
    out = tmp_path / "imported"
    _load_script(ROOT / "tools" / "import_gradtts.py", "import_gradtts").main(
        [str(checkpoint), str(out), "--speakers", str(tmp_path / "speakers.txt")])
    synthesize = _load_script(ROOT / "recipes" / "tts" / "synthesize.py", "tts_synthesize_import")
    rows = synthesize.synthesize(compose_config("tts", "synthesize", [
        f"run_dir={out}", "text=Hello there.", "speaker=us_m1", "n_timesteps=2", "vocoder.n_iter=2", "plots=false"]))
    assert len(rows) == 1 and rows[0]["frames"] > 0
    train = _load_script(ROOT / "recipes" / "tts" / "train.py", "tts_train_import")
    overrides = [f"init_from={out}", "data.voices=[us_f1,us_m1,gb_f2]", "data.utterances_per_voice=2",
                 "trainer.max_steps=1", "trainer.batch_size=2", "trainer.tensorboard=false", "trainer.progress=false",
                 "segment_seconds=0.25", "samples.texts=[]", "loss=pseudo_huber"]
    train.train(compose_config("tts", "train", overrides), tmp_path / "fine")
    tuned = load_latest_checkpoint(tmp_path / "fine" / "checkpoints")
    assert tuned.step == 1 and "decoder_attention_padding: include" in tuned.config_yaml
    start = convert_state_dict(authors_state("multi"))
    moved = tuned.tensors["model"]["model.encoder.proj_mu.weight"]
    assert moved.shape == start["encoder.proj_mu.weight"].shape
    assert 0 < (moved - start["encoder.proj_mu.weight"]).abs().max() < 0.1  # one step away from the import
    with pytest.raises(ValueError, match="same speaker ids"):
        train.train(compose_config("tts", "train", [*overrides, "data.voices=[us_f1,us_m1]"]), tmp_path / "bad")


def test_authors_hifigan_in_speechbrains_generator(tmp_path):
    from speechbrain.lobes.models.HifiGAN import HifiganGenerator

    from robust_gen.speech.gradtts.convert import hifigan_generator_kwargs, write_authors_hifigan
    from robust_gen.speech.vocoder import SpeechBrainHifiGan

    meta = json.loads((FIXTURE.parent / "hifigan_reference.json").read_text())
    tensors = load_file(str(FIXTURE.parent / "hifigan_reference.safetensors"))
    generator = torch.Generator().manual_seed(meta["weight_seed"])
    state = {key: (torch.rand(shape, generator=generator) + 0.5 if key.endswith("weight_g")
                   else torch.randn(shape, generator=generator) * 0.1) for key, shape in meta["keys"]}
    torch.save({"generator": state}, tmp_path / "hifigan.pt")  # the authors' format
    folder = write_authors_hifigan(tmp_path / "hifigan.pt", tmp_path / "vocoder", meta["config"])
    net = HifiganGenerator(**hifigan_generator_kwargs(meta["config"])).eval()
    from robust_gen.speech.gradtts.convert import convert_hifigan_state_dict
    from robust_gen.speech.vocoder import limit_level, zero_padding_like_original

    net.load_state_dict(convert_hifigan_state_dict(state))
    mel, hop, edge = tensors["mel"], 256, net.inference_padding
    with torch.no_grad():
        reflect = net(mel)  # SpeechBrain's own reflection padding
        # what SpeechBrain's inference draws: replicated edge frames around the mel, reflection inside
        padded = net(torch.nn.functional.pad(mel, (edge, edge), "replicate"))[..., edge * hop : -edge * hop]
        exact = zero_padding_like_original(net)(mel)
    assert torch.allclose(exact, tensors["wav"], atol=TOL)
    assert not torch.allclose(reflect, tensors["wav"], atol=1e-3)  # near the edges (here 6 frames are all edge)
    # the converted folder says it pads with zeros: the recipe's vocoder then is the original, to float rounding
    vocoder = SpeechBrainHifiGan(folder, savedir=tmp_path / "save")  # loads offline through from_hparams
    assert vocoder.padding == "zeros"
    assert torch.allclose(vocoder(mel), limit_level(tensors["wav"].squeeze(1)), atol=TOL)
    # SpeechBrain's padding on request: its extra edge frames are cropped, so the waveform lines up with the mel
    speechbrain = SpeechBrainHifiGan(folder, savedir=tmp_path / "save2", padding="reflect")
    assert speechbrain.padding == "reflect" and speechbrain.edge_frames == edge
    assert torch.allclose(speechbrain(mel), limit_level(padded.squeeze(1)), atol=TOL)
    with pytest.raises(ValueError, match=r"vocoder.padding must be one of \['reflect', 'zeros'\] or null"):
        SpeechBrainHifiGan(folder, padding="same")
