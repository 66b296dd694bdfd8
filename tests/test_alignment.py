"""Tests for monotonic alignment search (robust_gen.speech.gradtts.alignment)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_gen.speech.gradtts.alignment import (
    monotonic_alignment_search,
    reference_monotonic_alignment_search,
)

FAST_BACKENDS = ("numba", "torch", "auto")


def _masks(text_lengths, mel_lengths, t_text=None, t_mel=None):
    t_text = t_text or max(text_lengths)
    t_mel = t_mel or max(mel_lengths)
    x_mask = torch.arange(t_text)[None, :] < torch.tensor(text_lengths)[:, None]
    y_mask = torch.arange(t_mel)[None, :] < torch.tensor(mel_lengths)[:, None]
    return x_mask, y_mask


def _all_monotonic_paths(t_text, t_mel):
    """Every token-index sequence over frames: starts at 0, ends at T_text - 1, steps of 0 or 1."""
    for steps in itertools.combinations(range(1, t_mel), t_text - 1):  # frames where the token advances
        sequence, token = [], 0
        for y in range(t_mel):
            token += y in steps
            sequence.append(token)
        yield sequence


def _tokens_per_frame(path):
    """[T_text, T_mel] 0/1 path -> token index of each frame."""
    return path.argmax(axis=0).tolist()


# ---------------------------------------------------------------- the oracle against brute force


@pytest.mark.parametrize("seed", range(40))
def test_reference_is_the_best_path_with_ties_resolved_by_staying(seed):
    rng = np.random.default_rng(seed)
    t_text = int(rng.integers(1, 5))
    t_mel = int(rng.integers(t_text, 8))
    # small integers: sums are exact and ties are frequent, so the tie rule is exercised
    log_p = rng.integers(-2, 2, size=(t_text, t_mel)).astype(np.float64)
    path = reference_monotonic_alignment_search(log_p)
    tokens = _tokens_per_frame(path)
    assert path.sum() == t_mel and set(np.unique(path)) <= {0.0, 1.0}

    candidates = list(_all_monotonic_paths(t_text, t_mel))
    scores = [sum(log_p[x, y] for y, x in enumerate(seq)) for seq in candidates]
    best = max(scores)
    assert sum(log_p[x, y] for y, x in enumerate(tokens)) == best
    # Backtracking from the last frame stays on equality, so among the optimal paths it takes the one whose
    # token sequence, read from the last frame backwards, is the largest.
    optimal = [seq for seq, score in zip(candidates, scores) if score == best]
    assert tokens == max(optimal, key=lambda seq: seq[::-1])


def test_reference_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="T_text=3, T_mel=2"):
        reference_monotonic_alignment_search(np.zeros((3, 2)))


# ---------------------------------------------------------------- backends agree with the oracle


def _check_path(path, text_lengths, mel_lengths):
    """One 1 per frame inside the masks, zeros outside, monotone, starting at token 0 and ending at the last."""
    for b, (t_text, t_mel) in enumerate(zip(text_lengths, mel_lengths)):
        sample = path[b].numpy()
        assert not sample[t_text:].any() and not sample[:, t_mel:].any()
        inside = sample[:t_text, :t_mel]
        assert (inside.sum(axis=0) == 1).all()
        tokens = np.array(_tokens_per_frame(inside))
        assert tokens[0] == 0 and tokens[-1] == t_text - 1
        assert set(np.diff(tokens).tolist()) <= {0, 1}


def _reference_batch(log_p, text_lengths, mel_lengths, dtype):
    expected = np.zeros(log_p.shape)
    for b, (t_text, t_mel) in enumerate(zip(text_lengths, mel_lengths)):
        sample = log_p[b, :t_text, :t_mel].numpy().astype(dtype)
        expected[b, :t_text, :t_mel] = reference_monotonic_alignment_search(sample)
    return torch.from_numpy(expected)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    batch=st.integers(1, 5),
    t_text=st.integers(1, 12),
    extra=st.integers(0, 30),
    kind=st.sampled_from(["normal", "ties", "gaussian_prior"]),
    precision=st.sampled_from(["float64", "float32"]),
)
def test_backends_match_the_reference(data, batch, t_text, extra, kind, precision):
    t_mel = t_text + extra
    text_lengths = data.draw(st.lists(st.integers(1, t_text), min_size=batch, max_size=batch))
    text_lengths[0] = t_text  # the padded size is used by some sample, as in a real batch
    mel_lengths = [data.draw(st.integers(tl, t_mel)) for tl in text_lengths]
    mel_lengths[-1] = t_mel
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    if kind == "normal":
        log_p = torch.randn(batch, t_text, t_mel, generator=generator, dtype=torch.float64)
    elif kind == "ties":
        log_p = torch.randint(-1, 1, (batch, t_text, t_mel), generator=generator).double()
    else:  # Grad-TTS: log N(y | mu_x, I) summed over 80 mel channels, large negative values
        mu = torch.randn(batch, 8, t_text, generator=generator, dtype=torch.float64)
        y = torch.randn(batch, 8, t_mel, generator=generator, dtype=torch.float64)
        log_p = -0.5 * ((mu[:, :, :, None] - y[:, :, None, :]) ** 2).sum(1) - 4 * np.log(2 * np.pi)
    x_mask, y_mask = _masks(text_lengths, mel_lengths, t_text, t_mel)
    log_p = log_p.masked_fill(~(x_mask[:, :, None] & y_mask[:, None, :]), float("nan"))  # padding is ignored

    expected = _reference_batch(
        log_p, text_lengths, mel_lengths, np.float64 if precision == "float64" else np.float32
    )
    via_reference = monotonic_alignment_search(
        log_p, x_mask, y_mask, backend="reference", precision=precision
    )
    assert torch.equal(via_reference, expected)
    _check_path(expected, text_lengths, mel_lengths)
    for backend in FAST_BACKENDS:
        path = monotonic_alignment_search(log_p, x_mask, y_mask, backend=backend, precision=precision)
        assert torch.equal(path, expected), backend


@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "reference"])
def test_medium_batch_with_realistic_scores(backend):
    generator = torch.Generator().manual_seed(0)
    text_lengths, mel_lengths = [40, 23, 31, 40], [150, 90, 31, 121]
    mu = torch.randn(4, 80, 40, generator=generator)
    y = mu.repeat_interleave(4, dim=2)[:, :, :150] + torch.randn(4, 80, 150, generator=generator)
    log_p = -0.5 * ((mu[:, :, :, None] - y[:, :, None, :]) ** 2).sum(1)
    x_mask, y_mask = _masks(text_lengths, mel_lengths)
    path = monotonic_alignment_search(log_p, x_mask.float(), y_mask.float(), backend=backend)
    expected = _reference_batch(log_p, text_lengths, mel_lengths, np.float64).float()
    assert torch.equal(path, expected)
    _check_path(path, text_lengths, mel_lengths)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "reference"])
def test_all_ties_give_one_frame_per_token_and_the_rest_to_the_last(backend):
    x_mask, y_mask = _masks([4, 2, 1], [9, 5, 3])
    path = monotonic_alignment_search(torch.zeros(3, 4, 9), x_mask, y_mask, backend=backend)
    assert path.sum(-1).tolist() == [[1, 1, 1, 6], [1, 4, 0, 0], [3, 0, 0, 0]]


@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "reference"])
def test_equal_lengths_give_the_diagonal(backend):
    log_p = torch.randn(2, 6, 6)
    path = monotonic_alignment_search(log_p, torch.ones(2, 6), torch.ones(2, 6), backend=backend)
    assert torch.equal(path, torch.eye(6).expand(2, 6, 6))


@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "reference"])
def test_obvious_alignment_is_found(backend):
    durations = torch.tensor([3, 1, 4, 2])
    tokens = torch.repeat_interleave(torch.arange(4), durations)
    log_p = torch.where(torch.arange(4)[:, None] == tokens[None, :], 0.0, -10.0)[None]
    path = monotonic_alignment_search(log_p, torch.ones(1, 4), torch.ones(1, 10), backend=backend)
    assert path[0].sum(-1).tolist() == durations.tolist()


@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "reference"])
def test_precision_is_the_accumulation_dtype(backend):
    # float64: 1e8 + 2 < 1e8 + 3, so the path advances early; float32 (spacing 8 near 1e8): both sums round to
    # 1e8, a tie, so the path stays.
    log_p = torch.tensor([[[1e8, 3.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float64)
    masks = (torch.ones(1, 2), torch.ones(1, 3))
    in_64 = monotonic_alignment_search(log_p, *masks, backend=backend, precision="float64")
    in_32 = monotonic_alignment_search(log_p, *masks, backend=backend, precision="float32")
    assert in_64[0].sum(-1).tolist() == [2, 1] and in_32[0].sum(-1).tolist() == [1, 2]


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_keeps_shape_dtype_device_and_has_no_grad(dtype):
    log_p = torch.randn(2, 3, 7).to(dtype).requires_grad_(dtype.is_floating_point)
    x_mask, y_mask = _masks([3, 2], [7, 4])
    path = monotonic_alignment_search(log_p, x_mask[:, None], y_mask[:, None])  # [B, 1, T] masks too
    assert path.shape == log_p.shape and path.dtype == dtype and path.device == log_p.device
    assert not path.requires_grad
    _check_path(path.float(), [3, 2], [7, 4])


def test_mel_shorter_than_text_names_the_samples():
    x_mask, y_mask = _masks([3, 5, 2], [4, 4, 1], 5, 6)
    with pytest.raises(ValueError, match=r"sample 1: T_text=5, T_mel=4, sample 2: T_text=2, T_mel=1"):
        monotonic_alignment_search(torch.zeros(3, 5, 6), x_mask, y_mask)


def test_empty_text_is_an_error():
    x_mask, y_mask = _masks([2, 0], [3, 3], 2, 3)
    with pytest.raises(ValueError, match="sample 1: T_text=0"):
        monotonic_alignment_search(torch.zeros(2, 2, 3), x_mask, y_mask)


def test_non_finite_scores_inside_the_masks_are_an_error():
    log_p = torch.zeros(2, 2, 3)
    log_p[1, 0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        monotonic_alignment_search(log_p, torch.ones(2, 2), torch.ones(2, 3))


@pytest.mark.parametrize(
    ("log_p", "x_mask", "y_mask", "message"),
    [
        (torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3), "T_text, T_mel"),
        (torch.zeros(1, 2, 3, dtype=torch.long), torch.ones(1, 2), torch.ones(1, 3), "floating"),
        (torch.zeros(1, 2, 3), torch.ones(1, 3), torch.ones(1, 3), r"x_mask must have shape \[1, 2\]"),
        (torch.zeros(1, 2, 3), torch.ones(1, 2), torch.tensor([[1, 0, 1]]), "prefix mask"),
        (torch.zeros(1, 2, 3), torch.ones(1, 2), torch.tensor([[1, 2, 1]]), "only 0 and 1"),
        (torch.zeros(1, 2, 3), [[1, 1]], torch.ones(1, 3), "torch.Tensor"),
    ],
)
def test_bad_inputs_are_clear_errors(log_p, x_mask, y_mask, message):
    with pytest.raises((ValueError, TypeError), match=message):
        monotonic_alignment_search(log_p, x_mask, y_mask)


def test_unknown_backend_and_precision_are_errors():
    args = (torch.zeros(1, 1, 1), torch.ones(1, 1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="'cython'"):
        monotonic_alignment_search(*args, backend="cython")
    with pytest.raises(ValueError, match="'float16'"):
        monotonic_alignment_search(*args, precision="float16")
