"""Monotonic alignment search (MAS): the Viterbi path that Glow-TTS and Grad-TTS use to get durations.

Given ``log_p[x, y]``, the log-likelihood of mel frame ``y`` under text token ``x`` (Grad-TTS: log N(y | mu_x, I)),
MAS finds the monotonic, surjective alignment (each frame goes to one token, tokens in order, none skipped)
with the largest total log-likelihood. The dynamic programme (Kim et al. 2020, Glow-TTS, Algorithm 1) is::

    value[0, 0] = log_p[0, 0]
    value[x, y] = log_p[x, y] + max(value[x, y-1]   (stay on token x; not allowed when x == y),
                                    value[x-1, y-1] (advance from token x-1; not allowed when x == 0))

over the reachable band ``max(0, T_text + y - T_mel) <= x <= min(T_text - 1, y)``; then backtrack from
``(T_text - 1, T_mel - 1)``: mark ``(x, y)``, and move to ``x - 1`` when ``x != 0`` and
(``x == y`` or ``value[x, y-1] < value[x-1, y-1]``); on a tie the path stays. Every backend here reproduces
exactly this path, ties included.

Backends (``backend=`` of :func:`monotonic_alignment_search`):

* ``"reference"``: :func:`reference_monotonic_alignment_search`, a plain Python loop per sample; the test oracle.
* ``"numba"``: a compiled CPU kernel, parallel over the batch; what ``"auto"`` picks for CPU tensors.
* ``"torch"``: vectorised over batch and text, looping over mel frames on the tensor's device; what ``"auto"``
  picks for CUDA tensors (and for CPU when numba is not installed).

Precision: values accumulate along the path (sums of hundreds of log-likelihoods), so by default every backend
computes in float64, whatever ``log_p``'s dtype; ``precision="float32"`` halves memory and matches the original
Grad-TTS kernel. Within one precision all backends do the same additions in the same order and agree bit for bit.

Examples
--------
>>> import torch
>>> log_p = torch.tensor([[[0.0, -1.0, -5.0, -5.0], [-5.0, 0.0, 0.0, -1.0]]])  # 2 tokens, 4 frames
>>> path = monotonic_alignment_search(log_p, torch.ones(1, 2), torch.ones(1, 4))
>>> path[0].tolist()
[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]]
>>> path.sum(-1)  # durations per token
tensor([[1., 3.]])
"""

from __future__ import annotations

import numpy as np
import torch

try:  # numba is a dependency of the package, but GPU-only environments may lack it: "torch" still works there
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = ["BACKENDS", "PRECISIONS", "monotonic_alignment_search", "reference_monotonic_alignment_search"]

BACKENDS = ("auto", "numba", "torch", "reference")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def reference_monotonic_alignment_search(log_p: np.ndarray) -> np.ndarray:
    """The MAS path of ONE sample, written as plainly as possible (the oracle the fast backends are tested on).

    Parameters
    ----------
    log_p : np.ndarray
        ``[T_text, T_mel]`` log-likelihoods of exactly this sample's tokens and frames (no padding),
        ``T_mel >= T_text >= 1``. Arithmetic happens in ``log_p``'s dtype (numpy float32 scalars stay float32).

    Returns
    -------
    np.ndarray
        ``[T_text, T_mel]`` 0/1 path in ``log_p``'s dtype.

    Examples
    --------
    >>> reference_monotonic_alignment_search(np.zeros((2, 3))).tolist()  # a tie everywhere: stay as long as possible
    [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    """
    t_text, t_mel = log_p.shape
    if not 1 <= t_text <= t_mel:
        raise ValueError(f"MAS needs 1 <= T_text <= T_mel, got T_text={t_text}, T_mel={t_mel}")
    minus_infinity = float("-inf")
    value = np.full_like(log_p, minus_infinity)  # cells outside the reachable band are never read
    for y in range(t_mel):
        for x in range(max(0, t_text + y - t_mel), min(t_text - 1, y) + 1):
            if x == 0 and y == 0:
                value[x, y] = log_p[x, y]
                continue
            stay = value[x, y - 1] if x != y else minus_infinity
            advance = value[x - 1, y - 1] if x != 0 else minus_infinity
            value[x, y] = log_p[x, y] + max(stay, advance)

    path = np.zeros_like(log_p)
    x = t_text - 1
    for y in range(t_mel - 1, -1, -1):
        path[x, y] = 1
        if x != 0 and (x == y or value[x, y - 1] < value[x - 1, y - 1]):
            x -= 1
    return path


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _mas_one_sample_numba(log_p, t_text, t_mel, columns, moved, path, limit):  # pragma: no cover - compiled
        # The whole call in one kernel, so the Python side needs no masked float64 copy of log_p and no separate
        # finiteness pass (together they cost more than the search itself).
        # 1. Finiteness of every cell inside the masks, in log_p's own dtype against the accumulation dtype's
        #    largest finite value (NaN fails the comparison too); a branch-free reduction that vectorises.
        finite = True
        for x in range(t_text):
            for y in range(t_mel):
                finite &= abs(log_p[x, y]) <= limit
        if not finite:
            return False
        # 2. Forward pass frame by frame (the reference's column order): column y depends only on column y - 1,
        #    so the loop over tokens has no carried dependency. Two column buffers in the accumulation dtype,
        #    shifted by one so that entry 0 is a permanent -inf ("advance" at token 0 is not allowed); entries
        #    above the band stay -inf, which makes "stay" at x == y lose as the rule demands. Storing log_p into
        #    the buffer first casts it to the accumulation dtype: the additions are exactly the reference's.
        #    The backtracking decision value[x, y-1] < value[x-1, y-1] is kept as one byte per cell.
        old, new = columns[0], columns[1]
        old[:] = -np.inf
        new[:] = -np.inf
        new[1] = log_p[0, 0]
        for y in range(1, t_mel):
            old, new = new, old
            decisions = moved[y]
            for x in range(max(0, t_text + y - t_mel), min(t_text - 1, y) + 1):
                stay, advance = old[x + 1], old[x]
                step = stay < advance
                decisions[x] = step
                new[x + 1] = log_p[x, y]
                new[x + 1] += advance if step else stay
        # 3. Backtrack from the last cell with the stored decisions (ties stay).
        x = t_text - 1
        for y in range(t_mel - 1, -1, -1):
            path[x, y] = 1
            if x != 0 and (x == y or moved[y, x]):
                x -= 1
        return True

    def _mas_batch(log_p, text_lengths, mel_lengths, columns, moved, path, limit, finite):  # pragma: no cover
        for b in numba.prange(log_p.shape[0]):
            finite[b] = _mas_one_sample_numba(
                log_p[b], text_lengths[b], mel_lengths[b], columns[b], moved[b], path[b], limit
            )

    # One source, two compilations: the parallel one spreads the batch over numba's threads; on one thread the
    # serial one saves the thread pool's launch (about 10 % of a call at Grad-TTS's sizes).
    _mas_batch_numba = numba.njit(cache=True, parallel=True)(_mas_batch)
    _mas_batch_serial = numba.njit(cache=True)(_mas_batch)

    @numba.njit(cache=True, nogil=True)
    def _prefix_lengths_numba(mask, lengths):  # pragma: no cover - compiled
        # Lengths of [B, T] bool prefix masks in one pass; False when some row is not ones-then-zeros.
        for b in range(mask.shape[0]):
            length = 0
            while length < mask.shape[1] and mask[b, length]:
                length += 1
            for t in range(length, mask.shape[1]):
                if mask[b, t]:
                    return False
            lengths[b] = length
        return True


_NUMBA_DTYPES = (torch.float32, torch.float64)  # dtypes the kernel reads in place (no converted copy)


def _mas_numba(
    log_p: torch.Tensor, text_lengths: torch.Tensor, mel_lengths: torch.Tensor, precision: str
) -> torch.Tensor:
    """The numba backend on raw ``log_p`` (any values outside the masks); checks finiteness itself."""
    if numba is None:
        raise ImportError(
            "backend='numba' needs the numba package (pip install numba); or use backend='torch'"
        )
    accumulate = PRECISIONS[precision]
    scores = log_p.detach().cpu()
    if scores.dtype not in _NUMBA_DTYPES:  # float16 / bfloat16: numba reads neither; one converted copy
        scores = scores.to(accumulate)
    batch, t_text, t_mel = scores.shape
    out_dtype = log_p.dtype if log_p.dtype in _NUMBA_DTYPES else torch.uint8
    path = torch.zeros(batch, t_text, t_mel, dtype=out_dtype)
    columns = np.empty((batch, 2, t_text + 1), dtype=np.float64 if accumulate == torch.float64 else np.float32)
    moved = np.empty((batch, t_mel, t_text), dtype=np.bool_)  # [frame, token]: written before read, band only
    finite = np.empty(batch, dtype=np.bool_)
    limit = float(torch.finfo(accumulate).max)
    threads = torch.get_num_threads()
    kernel = _mas_batch_serial if numba.get_num_threads() == 1 else _mas_batch_numba
    kernel(scores.numpy(), text_lengths.numpy(), mel_lengths.numpy(), columns, moved, path.numpy(), limit,
                     finite)
    # numba's OpenMP layer resets the process-wide OpenMP thread count when it first starts (e.g. 1 -> cores),
    # which would silently change torch's thread count, hence its summation order, from the first call on.
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not finite.all():
        _raise_non_finite(np.flatnonzero(~finite).tolist(), precision)
    return path


def _raise_non_finite(samples: list[int], precision: str) -> None:
    raise ValueError(f"log_p must be finite inside the masks (in {precision}); samples {samples} hold NaN or inf")


def _mas_reference(
    log_p: torch.Tensor, text_lengths: torch.Tensor, mel_lengths: torch.Tensor
) -> torch.Tensor:
    log_p_np = log_p.cpu().numpy()
    path = np.zeros(log_p_np.shape, dtype=np.uint8)
    for b, (t_text, t_mel) in enumerate(zip(text_lengths.tolist(), mel_lengths.tolist())):
        path[b, :t_text, :t_mel] = reference_monotonic_alignment_search(log_p_np[b, :t_text, :t_mel])
    return torch.from_numpy(path)


def _mas_torch(log_p: torch.Tensor, text_lengths: torch.Tensor, mel_lengths: torch.Tensor) -> torch.Tensor:
    """Batched MAS on log_p's device: one step per mel frame, each vectorised over batch and tokens."""
    batch, t_text, t_mel = log_p.shape
    device = log_p.device
    tokens = torch.arange(t_text, device=device)
    frames = torch.arange(t_mel, device=device)
    text_lengths = text_lengths.to(device)[:, None, None]
    mel_lengths = mel_lengths.to(device)[:, None, None]
    # Cells outside each sample's reachable band get -inf once, up front. Then "stay" at x == y reads
    # value[y, y-1], which is outside the band (-inf), and -inf never wins a max against a reachable
    # predecessor, so the loop needs no per-frame masking. log_p is finite (checked), so no inf - inf.
    lower = (text_lengths + frames[None, None, :] - mel_lengths).clamp(min=0)
    upper = torch.minimum(text_lengths - 1, frames[None, None, :])
    in_band = (tokens[None, :, None] >= lower) & (tokens[None, :, None] <= upper)
    banded = torch.where(in_band, log_p, torch.tensor(float("-inf"), dtype=log_p.dtype, device=device))
    banded = banded.permute(2, 0, 1).contiguous()  # [T_mel, B, T_text]: one contiguous slab per frame

    # moved[y, b, x]: backtracking at (x, y) steps to x - 1, i.e. value[x, y-1] < value[x-1, y-1]. At x == 0
    # "advance" is -inf (never moves); at x == y "stay" is -inf (always moves, as the rule demands).
    moved = torch.zeros(t_mel, batch, t_text, dtype=torch.bool, device=device)
    value = banded[0].clone()
    advance = torch.full_like(value, float("-inf"))
    best = torch.empty_like(value)
    for y in range(1, t_mel):
        advance[:, 1:] = value[:, :-1]
        torch.gt(advance, value, out=moved[y])
        torch.maximum(value, advance, out=best)
        torch.add(banded[y], best, out=value)

    # Backtrack all samples at once; a sample whose mel is shorter than y keeps its index until it starts.
    index = (text_lengths[:, 0, 0] - 1).clone()
    chosen = torch.empty(t_mel, batch, dtype=torch.long, device=device)
    mel_lengths = mel_lengths[:, 0, 0]
    for y in range(t_mel - 1, -1, -1):
        chosen[y] = index
        step = moved[y].gather(1, index[:, None])[:, 0] & (y < mel_lengths)
        index -= step.long()
    path = tokens[None, :, None] == chosen.T[:, None, :]
    return path & (frames[None, None, :] < mel_lengths[:, None, None])


def _as_lengths(mask: torch.Tensor, name: str, batch: int, length: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 3 and mask.shape[1] == 1:  # Grad-TTS keeps masks as [B, 1, T]
        mask = mask[:, 0]
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape [{batch}, {length}] (or [B, 1, T]), got {list(mask.shape)}")
    if numba is not None and mask.dtype == torch.bool and mask.device.type == "cpu":
        # The common case (bool masks on the CPU) in one compiled pass: the torch checks below cost ~10 small
        # tensor ops, which at Grad-TTS's sizes is as long as the search. A bad mask falls through to them.
        lengths = np.empty(batch, dtype=np.int64)
        if _prefix_lengths_numba(mask.numpy(), lengths):
            return torch.from_numpy(lengths)
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must hold only 0 and 1")
    mask = mask.bool()
    lengths = mask.sum(dim=1)
    prefix = torch.arange(length, device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(mask, prefix):
        bad = (mask != prefix).any(dim=1).nonzero()[:, 0].tolist()
        raise ValueError(
            f"{name} must be a prefix mask (ones, then zeros) in every sample; samples {bad} are not"
        )
    return lengths.cpu()


@torch.no_grad()
def monotonic_alignment_search(
    log_p: torch.Tensor,
    x_mask: torch.Tensor,
    y_mask: torch.Tensor,
    *,
    backend: str = "auto",
    precision: str = "float64",
) -> torch.Tensor:
    """The most likely monotonic alignment of text tokens to mel frames, for a padded batch.

    Parameters
    ----------
    log_p : torch.Tensor
        ``[B, T_text, T_mel]`` floating log-likelihoods; values outside the masks are ignored, values inside
        must be finite. Not differentiated through (runs under ``torch.no_grad``).
    x_mask, y_mask : torch.Tensor
        ``[B, T_text]`` and ``[B, T_mel]`` prefix masks (bool or 0/1; ``[B, 1, T]`` also accepted). Every sample
        needs ``1 <= text length <= mel length``.
    backend : str
        ``"auto"`` (numba for CPU tensors, torch for CUDA), ``"numba"``, ``"torch"`` or ``"reference"``.
    precision : str
        ``"float64"`` (default) or ``"float32"``: the dtype the path scores are accumulated in.

    Returns
    -------
    torch.Tensor
        0/1 path with ``log_p``'s shape, dtype and device: exactly one 1 per frame inside the masks, zeros outside.

    Raises
    ------
    ValueError
        Bad shapes or masks, non-finite ``log_p``, or a sample whose mel is shorter than its text (the message
        names the samples and their lengths: drop those clips from the data).

    Examples
    --------
    >>> log_p = torch.zeros(2, 3, 5)
    >>> x_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> y_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    >>> path = monotonic_alignment_search(log_p, x_mask, y_mask, backend="torch")
    >>> path.sum(-1).tolist()  # durations; on ties the path stays, so the last token takes the slack
    [[1.0, 1.0, 3.0], [1.0, 2.0, 0.0]]
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown MAS backend {backend!r}; choose one of {list(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown MAS precision {precision!r}; choose one of {list(PRECISIONS)}")
    if not isinstance(log_p, torch.Tensor) or log_p.dim() != 3 or not log_p.is_floating_point():
        shape = list(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"log_p must be a floating [B, T_text, T_mel] tensor, got {shape}")
    batch, t_text, t_mel = log_p.shape
    text_lengths = _as_lengths(x_mask, "x_mask", batch, t_text)
    mel_lengths = _as_lengths(y_mask, "y_mask", batch, t_mel)
    text_np, mel_np = text_lengths.numpy(), mel_lengths.numpy()  # numpy: a few µs, not a few torch ops
    bad = np.flatnonzero((text_np < 1) | (mel_np < text_np)).tolist()
    if bad:
        details = ", ".join(f"sample {b}: T_text={text_lengths[b]}, T_mel={mel_lengths[b]}" for b in bad)
        raise ValueError(
            f"monotonic alignment needs 1 <= T_text <= T_mel in every sample; {details}. "
            "Skip clips whose mel has fewer frames than their text has tokens"
        )
    if backend == "auto":
        backend = "torch" if log_p.is_cuda or numba is None else "numba"
    if backend == "numba":
        path = _mas_numba(log_p, text_lengths, mel_lengths, precision)
        return path.to(device=log_p.device, dtype=log_p.dtype)
    valid = (torch.arange(t_text)[None, :, None] < text_lengths[:, None, None]) & (
        torch.arange(t_mel)[None, None, :] < mel_lengths[:, None, None]
    )
    valid = valid.to(log_p.device)
    scores = torch.where(valid, log_p.detach(), 0.0).to(PRECISIONS[precision])  # padding may hold anything
    if not bool(torch.isfinite(scores).all()):
        _raise_non_finite((~torch.isfinite(scores)).flatten(1).any(dim=1).nonzero()[:, 0].tolist(), precision)
    if backend == "torch":
        path = _mas_torch(scores, text_lengths, mel_lengths)
    else:
        path = _mas_reference(scores, text_lengths, mel_lengths)
    return path.to(device=log_p.device, dtype=log_p.dtype)
