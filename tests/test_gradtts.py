"""Grad-TTS model: architecture size, shapes, the three loss terms against hand computations, attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robust_gen.diffusion.losses import L2Loss, PseudoHuberLoss
from robust_gen.diffusion.objective import DiffusionObjective, batch_mean
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.speech.gradtts.alignment import reference_monotonic_alignment_search
from robust_gen.speech.gradtts.decoder import LinearAttention, ScoreUNet, fix_len_compatibility
from robust_gen.speech.gradtts.model import (
    GradTTS,
    duration_loss_per_sample,
    durations_to_path,
    prior_log_likelihood,
    prior_loss_per_sample,
)
from robust_gen.speech.gradtts.text_encoder import RelativeSelfAttention, sequence_mask
from robust_gen.speech.task import GradTTSTask, random_segments, segment_frames_for

LOG_2PI = math.log(2 * math.pi)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_paper_size_parameter_count():
    model = GradTTS()  # the paper's architecture, one speaker, 149 tokens
    total = n_params(model)
    assert total == 14_835_032
    assert abs(total / 1e6 - 14.8) < 0.05  # Popov et al. 2021 report 14.8M
    assert n_params(model.encoder) == 7_200_145 and n_params(model.decoder) == 7_634_887
    assert model.decoder.num_downsamplings == 2 and model.frame_multiple == 4


def test_multi_speaker_conditioning_options():
    single = n_params(GradTTS.tiny())
    decoder_only = GradTTS.tiny(n_speakers=3, condition_encoder=False)
    both = GradTTS.tiny(n_speakers=3, condition_encoder=True)
    assert decoder_only.encoder.speaker_channels == 0 and both.encoder.speaker_channels == 8
    # decoder-only conditioning adds the embedding table, the speaker MLP and one more input channel
    assert n_params(decoder_only) > single
    assert n_params(both) > n_params(decoder_only)


def test_encoder_and_decoder_shapes():
    model = GradTTS.tiny(n_speakers=2)
    tokens, lengths = torch.randint(0, 149, (3, 11)), torch.tensor([11, 7, 2])
    speaker = model.speaker_vectors(torch.tensor([0, 1, 1]), 3)
    mu, logw, mask = model.encode(tokens, lengths, speaker)
    assert mu.shape == (3, 80, 11) and logw.shape == (3, 1, 11) and mask.shape == (3, 1, 11)
    assert torch.equal(mask[:, 0].sum(1), lengths.float())
    assert mu[1, :, 7:].abs().sum() == 0 and logw[2, :, 2:].abs().sum() == 0  # padding is zero
    x = torch.randn(3, 80, 16)
    out = model.noise_estimate(
        x, torch.rand(3), mu=torch.randn(3, 80, 16), mask=torch.ones(3, 1, 16), speaker=speaker
    )
    assert out.shape == (3, 80, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.decoder(torch.randn(1, 80, 10), torch.rand(1), mu=torch.randn(1, 80, 10), mask=torch.ones(1, 1, 10),
                      speaker=speaker[:1])  # fmt: skip
    with pytest.raises(ValueError, match="speaker ids"):
        model.speaker_vectors(torch.tensor([0, 5, 1]), 3)
    with pytest.raises(ValueError, match="pass speaker ids"):
        model.speaker_vectors(None, 3)


def test_duration_predictor_sees_a_detached_encoder():
    model = GradTTS.tiny()
    _, logw, _ = model.encode(torch.randint(0, 149, (2, 6)), torch.tensor([6, 4]))
    logw.sum().backward()
    assert model.encoder.proj_mu.weight.grad is None  # no duration gradient into the encoder...
    assert model.encoder.embedding.weight.grad is None
    assert model.encoder.duration.proj.weight.grad is not None  # ...only into the duration predictor


def test_duration_loss_matches_hand_computation():
    logw = torch.tensor([[[0.5, 1.0, 2.0]], [[0.0, 3.0, 7.0]]])  # [B, 1, T]
    durations = torch.tensor([[2.0, 1.0, 0.0], [4.0, 0.0, 9.0]])
    x_mask = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]])
    per_sample = duration_loss_per_sample(logw, durations, x_mask)
    first = ((0.5 - math.log(2 + 1e-8)) ** 2 + (1.0 - math.log(1 + 1e-8)) ** 2) / 2
    second = (
        (0.0 - math.log(4 + 1e-8)) ** 2 + (3.0 - math.log(1e-8)) ** 2 + (7.0 - math.log(9 + 1e-8)) ** 2
    ) / 3
    assert per_sample.tolist() == pytest.approx([first, second], rel=1e-6)
    # weighted by x_len, the batch mean is Grad-TTS's sum((logw - logw_)^2) / sum(x_len)
    total = (first * 2 + second * 3) / 5
    assert batch_mean(per_sample, torch.tensor([2.0, 3.0])).item() == pytest.approx(total, rel=1e-6)


def test_prior_loss_matches_hand_computation():
    y = torch.tensor([[[1.0, 2.0, 5.0], [0.0, -1.0, 5.0]]])  # [B=1, F=2, T=3], third frame is padding
    mu = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    squares = 1.0 + 1.0 + 1.0 + 4.0  # (1-0)^2 + (2-1)^2 + (0-1)^2 + (-1-1)^2
    expected = 0.5 * (squares + 4 * LOG_2PI) / (2 * 2)
    assert prior_loss_per_sample(y, mu, mask).item() == pytest.approx(expected, rel=1e-6)
    # two samples: weights sum(mask) * F reproduce sum(...) / (sum(mask) * F) over the batch
    y2, mu2, mask2 = (
        torch.randn(2, 3, 5),
        torch.randn(2, 3, 5),
        sequence_mask(torch.tensor([5, 2]), 5)[:, None].float(),
    )
    per_sample = prior_loss_per_sample(y2, mu2, mask2)
    official = (0.5 * ((y2 - mu2) ** 2 + LOG_2PI) * mask2).sum() / (mask2.sum() * 3)
    assert batch_mean(per_sample, mask2.sum((1, 2)) * 3).item() == pytest.approx(official.item(), rel=1e-6)


def test_prior_log_likelihood_is_the_gaussian_log_density():
    mu, y = torch.randn(2, 5, 3), torch.randn(2, 5, 4)
    log_p = prior_log_likelihood(mu, y)
    direct = torch.distributions.Normal(mu.transpose(1, 2)[:, :, None, :], 1.0).log_prob(
        y.transpose(1, 2)[:, None]
    )
    assert torch.allclose(log_p, direct.sum(-1), atol=1e-4)


def test_alignment_gives_one_token_per_frame_and_matches_reference():
    model = GradTTS.tiny()
    tokens, lengths = torch.randint(0, 149, (2, 5)), torch.tensor([5, 3])
    mu, _, x_mask = model.encode(tokens, lengths)
    y, y_lengths = torch.randn(2, 80, 9), torch.tensor([9, 6])
    y_mask = sequence_mask(y_lengths, 9)[:, None].float()
    path = model.align(mu, x_mask, y, y_mask)
    assert path.sum(1)[0].tolist() == [1.0] * 9 and path.sum(1)[1].tolist() == [1.0] * 6 + [0.0] * 3
    log_p = prior_log_likelihood(mu.detach(), y)[1, :3, :6].double().numpy()
    assert np.array_equal(
        path[1, :3, :6].numpy(), reference_monotonic_alignment_search(log_p).astype(np.float32)
    )


def test_durations_to_path_and_segments():
    path = durations_to_path(torch.tensor([[1, 3, 0, 2]]), 8)
    assert path.sum(-1).tolist() == [[1.0, 3.0, 0.0, 2.0]] and path[0, :, 6:].sum() == 0
    y = torch.arange(2 * 10, dtype=torch.float32).reshape(2, 1, 10)
    path = torch.arange(10.0).expand(2, 3, 10).clone()
    crop, path_crop, lengths = random_segments(y, path, torch.tensor([10, 3]), 4, torch.tensor([0.5, 0.9]))
    start = int(0.5 * 7)  # uniform over the 7 possible starts 0..6
    assert (
        crop[0, 0].tolist() == list(range(start, start + 4))
        and path_crop[0, 0].tolist() == crop[0, 0].tolist()
    )
    assert crop[1, 0].tolist() == [10.0, 11.0, 12.0, 0.0] and lengths.tolist() == [4, 3]
    assert segment_frames_for(2.0, 22050, 256) == 172 == fix_len_compatibility(2 * 22050 // 256)


@pytest.mark.parametrize("output", ["score", "eps"])
def test_diffusion_term_is_grad_tts_loss(output):
    """The core objective on the decoder reproduces Grad-TTS's sum((s * std + z)^2) / (sum(mask) * F)."""
    torch.manual_seed(0)
    model = GradTTS.tiny(output=output)
    y, mu = torch.randn(2, 80, 8), torch.randn(2, 80, 8)
    mask = sequence_mask(torch.tensor([8, 5]), 8)[:, None].float()
    y, mu = y * mask, mu * mask
    t, z = torch.tensor([0.3, 0.8]), torch.randn(2, 80, 8) * mask
    out = DiffusionObjective(model.schedule, L2Loss())(
        model.noise_estimate, y, mask=mask, mu=mu, model_kwargs={"mu": mu, "mask": mask}, t=t, noise=z
    )
    big_b = 0.05 * t + 9.975 * t**2  # Grad-TTS's cumulative noise B(t)
    decay = torch.exp(-0.5 * big_b)[:, None, None]
    std = torch.sqrt(1 - torch.exp(-big_b))[:, None, None]
    x_t = (y * decay + mu * (1 - decay) + z * std) * mask
    raw = model.decoder(x_t, t, mu=mu, mask=mask)
    if output == "score":
        official = ((raw * std + z) ** 2 * mask).sum() / (mask.sum() * 80)
    else:
        official = ((raw - z) ** 2 * mask).sum() / (mask.sum() * 80)
    assert batch_mean(out.loss, out.weight).item() == pytest.approx(official.item(), rel=1e-5)
    assert out.weight.tolist() == [8 * 80, 5 * 80]


def make_batch(batch=3, t_text=6, t_mel=30):
    return {
        "tokens": torch.randint(0, 149, (batch, t_text)),
        "token_lengths": torch.tensor([t_text, 4, 2][:batch]),
        "mels": torch.randn(batch, 80, t_mel) - 4,
        "mel_lengths": torch.tensor([t_mel, 20, 9][:batch]),
        "speakers": torch.tensor([0, 1, 0][:batch]),
    }


@pytest.mark.parametrize("loss", [L2Loss(), PseudoHuberLoss(form="huber", schedule="snr")])
@pytest.mark.parametrize("n_speakers", [1, 2])
def test_task_terms_are_per_sample_with_grad_tts_weights(loss, n_speakers):
    task = GradTTSTask(GradTTS.tiny(n_speakers=n_speakers), loss, segment_frames=16)
    batch = make_batch()
    terms = task(batch, BatchGenerator(0, step=3))
    assert terms["duration"].weights.tolist() == [6.0, 4.0, 2.0]
    assert terms["prior"].weights.tolist() == [16 * 80, 16 * 80, 9 * 80]  # crops of min(length, 16) frames
    assert terms["diffusion"].weights.tolist() == [16 * 80, 16 * 80, 9 * 80]
    for term in terms.values():
        assert term.values.shape == (3,) and torch.isfinite(term.values).all()
    total = sum(batch_mean(term.values, term.weights) for term in terms.values())
    total.backward()
    assert all(p.grad is not None for p in task.model.decoder.parameters() if p.requires_grad)
    again = task(batch, BatchGenerator(0, step=3))  # same step -> same draws, dropout included
    assert torch.equal(again["diffusion"].values, terms["diffusion"].values.detach())


def test_task_on_whole_utterances():
    task = GradTTSTask(GradTTS.tiny(), L2Loss(), segment_frames=None)
    terms = task(make_batch(), BatchGenerator(0, step=0))
    assert terms["diffusion"].weights.tolist() == [30 * 80, 20 * 80, 9 * 80]  # every frame, padded to 32
    with pytest.raises(ValueError, match="multiple of 4"):
        GradTTSTask(GradTTS.tiny(), L2Loss(), segment_frames=30)


def test_synthesize_shapes_and_determinism():
    model = GradTTS.tiny(n_speakers=2).eval()
    tokens, lengths = torch.randint(0, 149, (2, 7)), torch.tensor([7, 3])
    kwargs = dict(speakers=torch.tensor([0, 1]), n_timesteps=3)
    mel_a, frames_a = model.synthesize(tokens, lengths, generator=torch.Generator().manual_seed(1), **kwargs)
    mel_b, frames_b = model.synthesize(tokens, lengths, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(mel_a, mel_b) and torch.equal(frames_a, frames_b)
    assert mel_a.shape[-1] % 4 == 0 and mel_a.shape[-1] >= int(frames_a.max())
    assert mel_a[1, :, int(frames_a[1]) :].abs().sum() == 0
    sde, _ = model.synthesize(
        tokens, lengths, sampler="euler_sde", generator=torch.Generator().manual_seed(1), **kwargs
    )
    assert sde.shape == mel_a.shape and not torch.equal(sde, mel_a)
    _, slow_frames = model.synthesize(tokens, lengths, length_scale=2.0, **kwargs)
    # durations are ceil(w * length_scale) >= 2 ceil(w) - 1 per token
    assert bool((slow_frames >= 2 * frames_a - lengths).all()) and bool((slow_frames > frames_a).all())
    with pytest.raises(ValueError, match="n_timesteps"):
        model.synthesize(
            tokens, lengths, n_timesteps=0, **{k: v for k, v in kwargs.items() if k != "n_timesteps"}
        )


def naive_relative_attention(attn: RelativeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Loop form of Shaw et al.'s relative attention (zero relative term beyond the window)."""
    b, c, t = x.shape
    h, d, w = attn.n_heads, attn.head_dim, attn.window
    q = attn.to_q(x).view(b, h, d, t)
    k = attn.to_k(x).view(b, h, d, t)
    v = attn.to_v(x).view(b, h, d, t)
    out = torch.zeros(b, h, d, t)
    for i in range(t):
        rel_k = [attn.rel_k[j - i + w] if abs(j - i) <= w else torch.zeros(d) for j in range(t)]
        rel_v = [attn.rel_v[j - i + w] if abs(j - i) <= w else torch.zeros(d) for j in range(t)]
        logits = torch.stack(
            [(q[:, :, :, i] * (k[:, :, :, j] + rel_k[j])).sum(-1) / math.sqrt(d) for j in range(t)], -1
        )
        p = logits.softmax(-1)
        out[:, :, :, i] = sum(p[:, :, j, None] * (v[:, :, :, j] + rel_v[j]) for j in range(t))
    return attn.to_out(out.reshape(b, c, t))


def test_relative_attention_matches_loop_form():
    torch.manual_seed(0)
    attn = RelativeSelfAttention(8, n_heads=2, window_size=2).eval()
    x = torch.randn(2, 8, 7)
    fast = attn(x, torch.ones(2, 1, 7))
    assert torch.allclose(fast, naive_relative_attention(attn, x), atol=1e-5)


def test_linear_attention_ignores_padding_and_starts_as_identity():
    torch.manual_seed(0)
    attn = LinearAttention(4, heads=2, head_dim=3)
    x = torch.randn(1, 4, 8, 6)
    assert torch.equal(attn(x, torch.ones(1, 1, 1, 6)), x)  # the ReZero gate starts at 0
    with torch.no_grad():
        attn.gate.fill_(1.0)
    mask = torch.tensor([[[[1.0, 1, 1, 1, 0, 0]]]])
    padded = x.clone()
    padded[..., 4:] = 100.0  # garbage in padded frames must not reach the kept frames
    assert torch.allclose(attn(x, mask)[..., :4], attn(padded, mask)[..., :4], atol=1e-5)


def test_score_unet_rejects_bad_configs():
    with pytest.raises(ValueError, match="divisible"):
        ScoreUNet(dim=8, dim_mults=(1, 2, 4, 8), groups=4, n_feats=20)
    with pytest.raises(ValueError, match="groups"):
        ScoreUNet(dim=6, groups=4)
    with pytest.raises(ValueError, match="output"):
        GradTTS.tiny(output="x0")


def test_frequency_padding_is_off_by_default_and_crops_back():
    """Padding 0 is the original network; with padding the edge bands see copies of themselves, the padded bands
    never reach the output, and the weights are the same tensors (so a padded model can load an unpadded state)."""
    torch.manual_seed(0)
    plain = ScoreUNet(dim=8, groups=4, n_feats=16)
    padded = ScoreUNet(dim=8, groups=4, n_feats=16, frequency_padding=2)
    padded.load_state_dict(plain.state_dict())
    x, mu, mask = torch.randn(2, 16, 8), torch.randn(2, 16, 8), torch.ones(2, 1, 8)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        for net in (plain, padded):  # open the zero-initialised final conv so the output depends on the input
            net.final_conv.weight.normal_()
        out_plain, out_padded = plain(x, t, mu=mu, mask=mask), padded(x, t, mu=mu, mask=mask)
    assert out_padded.shape == out_plain.shape == (2, 16, 8)
    assert not torch.allclose(out_plain, out_padded)  # the edge bands are computed differently ...
    manual = ScoreUNet(dim=8, groups=4, n_feats=20)  # ... exactly as an unpadded net on replicated edges, cropped
    manual.load_state_dict(plain.state_dict())
    edge = torch.nn.functional.pad
    with torch.no_grad():
        manual.final_conv.weight.copy_(padded.final_conv.weight)
        wide = manual(edge(x[:, None], (0, 0, 2, 2), mode="replicate")[:, 0], t,
                      mu=edge(mu[:, None], (0, 0, 2, 2), mode="replicate")[:, 0], mask=mask)
    assert torch.allclose(wide[:, 2:18], out_padded, atol=1e-5)


def test_frequency_padding_rejects_bad_values_and_reaches_the_model():
    with pytest.raises(ValueError, match="frequency_padding=1 must be >= 0 and keep n_feats"):
        ScoreUNet(dim=8, groups=4, n_feats=80, frequency_padding=1)
    with pytest.raises(ValueError, match="frequency_padding_mode"):
        ScoreUNet(dim=8, groups=4, n_feats=80, frequency_padding=2, frequency_padding_mode="zeros")
    model = GradTTS.tiny(decoder_frequency_padding=4, decoder_frequency_padding_mode="reflect")
    assert (model.decoder.frequency_padding, model.decoder.frequency_padding_mode) == (4, "reflect")
    mel, _ = model.synthesize(torch.randint(0, 149, (1, 5)), torch.tensor([5]), n_timesteps=2,
                              generator=torch.Generator().manual_seed(0))
    assert mel.shape[1] == 80 and bool(torch.isfinite(mel).all())
