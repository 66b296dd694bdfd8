"""What the per-sample loss record of a run (``trainer.track_sample_losses``) says about each sample.

Off-topic samples are learned late and their loss stays high (the memorisation literature: Arpit et al. 2017,
"A closer look at memorization"; the loss-trajectory audits of Pleiss et al. 2020 and Swayamdipta et al. 2020).
The record holds one loss per sample per visit at a random noise level; its whole-set level falls as training
goes on. :func:`tracked_loss_score` therefore divides each epoch's values by that epoch's median over the samples
before averaging over epochs, so a sample's number says how hard it was compared with the others. The default
averages the whole trajectory: on the 30 % outlier run of docs/audit.md (300 epochs of 178 images) the early
epochs, before the model memorises every image, separate best (AUROC 0.76 for all epochs, 0.75 for the first 60,
0.66 for the last half).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robust_gen.training.sample_losses import SAMPLE_LOSSES_NAME, load_sample_losses

__all__ = ["tracked_loss_score"]


def tracked_loss_score(run_dir: str | os.PathLike, ids, fraction: float = 1.0) -> np.ndarray | None:
    """Mean over the last ``fraction`` of the epochs (1: all) of each sample's epoch loss / the epoch's median; None when the
    run has no record. A sample the record never saw gets 0 (neutral after the median division is 1; 0 ranks it
    least suspicious, which is what an absent record can claim).

    Examples
    --------
    >>> import tempfile, torch
    >>> from robust_gen.training.sample_losses import SampleLossRecord
    >>> record = SampleLossRecord()
    >>> for epoch in range(2):
    ...     record.add(torch.arange(3), torch.tensor([1.0, 1.0, 4.0]) / (epoch + 1), epoch)
    >>> tracked_loss_score(record.save(tempfile.mkdtemp()).parent, [0, 1, 2, 5]).tolist()
    [1.0, 1.0, 4.0, 0.0]
    """
    path = Path(run_dir) / SAMPLE_LOSSES_NAME
    if not path.is_file():
        return None
    ids = np.asarray(ids, dtype=np.int64)
    means = load_sample_losses(path).mean_loss().numpy()
    width = max(means.shape[1], int(ids.max(initial=-1)) + 1)
    means = np.pad(means, ((0, 0), (0, width - means.shape[1])), constant_values=np.nan)
    epochs = means.shape[0]
    kept = means[epochs - max(1, round(epochs * fraction)):]
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as quiet:
        quiet.filter(RuntimeWarning)  # all-NaN columns: samples never seen in those epochs
        normalised = kept / np.nanmedian(kept, axis=1, keepdims=True)
        return np.nan_to_num(np.nanmean(normalised[:, ids], axis=0), nan=0.0)
