"""A cheap running record of every training sample's loss, per epoch (``trainer.track_sample_losses=true``).

A data audit (:mod:`robust_gen.audit`) asks which samples the model found hard, and when: an off-topic image is
learned late and its loss stays high, while the concept's own images are fitted early. Re-scoring every sample
at every checkpoint would cost a pass over the data each time; the trainer already computes one loss per sample
per step (the task's ``[B]`` loss term), so recording it costs nothing but a scatter-add.

The dataset tells which sample a row of the batch is through the batch key ``sample_index`` (the record's index
in the data as loaded, the index the corruption manifest uses). A batch without that key is not recorded (the
record then stays empty and a warning says why).

Record layout (``sample_losses.safetensors`` in the run directory; no pickle): ``loss_sum`` and ``count``, both
``[epochs, num_samples]`` (float64 / int64): the sum and the number of the sample's loss values seen in each
epoch. ``loss_sum / count`` is the epoch's mean loss of a sample (NaN where unseen). Each value is the loss at
the step's random noise level, so one value is noisy; the per-epoch means over many epochs are what to read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from robust_gen.training.run_dir import atomic_write_bytes

__all__ = ["SAMPLE_INDEX_KEY", "SAMPLE_LOSSES_NAME", "SampleLossRecord", "load_sample_losses"]

log = logging.getLogger(__name__)

#: The batch key that carries each row's sample index.
SAMPLE_INDEX_KEY = "sample_index"
#: File name of the record inside a run directory.
SAMPLE_LOSSES_NAME = "sample_losses.safetensors"


class SampleLossRecord:
    """Per-epoch sums and counts of each sample's loss, grown as new epochs and indices appear.

    Parameters
    ----------
    term:
        Name of the task's loss term to record (``"diffusion"`` for both recipes).

    Examples
    --------
    >>> record = SampleLossRecord()
    >>> record.add(torch.tensor([0, 2]), torch.tensor([1.0, 3.0]), epoch=0)
    >>> record.add(torch.tensor([2]), torch.tensor([5.0]), epoch=1)
    >>> record.mean_loss().tolist()
    [[1.0, nan, 3.0], [nan, nan, 5.0]]
    """

    def __init__(self, term: str = "diffusion") -> None:
        self.term = term
        self.loss_sum = torch.zeros(0, 0, dtype=torch.float64)
        self.count = torch.zeros(0, 0, dtype=torch.int64)
        self._warned = False

    def _grow(self, epochs: int, samples: int) -> None:
        old_e, old_n = self.loss_sum.shape
        if epochs <= old_e and samples <= old_n:
            return
        e, n = max(epochs, old_e), max(samples, old_n)
        loss_sum = torch.zeros(e, n, dtype=torch.float64)
        count = torch.zeros(e, n, dtype=torch.int64)
        loss_sum[:old_e, :old_n], count[:old_e, :old_n] = self.loss_sum, self.count
        self.loss_sum, self.count = loss_sum, count

    def add(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        """Add one batch: ``losses[i]`` is the loss of sample ``indices[i]`` in ``epoch``."""
        indices = indices.detach().long().cpu().reshape(-1)
        losses = losses.detach().double().cpu().reshape(-1)
        if indices.numel() != losses.numel():
            raise ValueError(f"{indices.numel()} sample indices for {losses.numel()} loss values")
        if indices.numel() == 0:
            return
        if int(indices.min()) < 0:
            raise ValueError("sample indices must be >= 0")
        self._grow(epoch + 1, int(indices.max()) + 1)
        finite = torch.isfinite(losses)  # a skipped non-finite step must not poison the record
        self.loss_sum[epoch].index_add_(0, indices[finite], losses[finite])
        self.count[epoch].index_add_(0, indices[finite], torch.ones_like(indices[finite]))

    def add_batch(self, batch: object, terms: dict, epoch: int, gather=None) -> None:
        """Record a trainer batch: its ``sample_index`` key and the task's ``term`` values.

        ``gather`` (e.g. ``accelerator.gather``) collects the rows of every process, so that the main process
        records the whole global batch.
        """
        if not isinstance(batch, dict) or SAMPLE_INDEX_KEY not in batch or self.term not in terms:
            if not self._warned:
                log.warning("trainer.track_sample_losses: the batch has no %r key or the task no %r term; "
                            "nothing is recorded", SAMPLE_INDEX_KEY, self.term)
                self._warned = True
            return
        indices, values = batch[SAMPLE_INDEX_KEY], terms[self.term].values.detach()
        if gather is not None:
            indices, values = gather(indices.to(values.device)), gather(values)
        self.add(indices, values, epoch)

    def mean_loss(self) -> torch.Tensor:
        """``[epochs, num_samples]`` mean loss per epoch (NaN where a sample was not seen)."""
        return self.loss_sum / self.count.clamp(min=1) + torch.where(self.count > 0, 0.0, float("nan"))

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write (atomically) ``<run_dir>/sample_losses.safetensors``."""
        path = Path(run_dir) / SAMPLE_LOSSES_NAME
        atomic_write_bytes(path, save({"loss_sum": self.loss_sum.contiguous(), "count": self.count.contiguous()},
                                      metadata={"term": self.term}))
        return path

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, term: str = "diffusion") -> SampleLossRecord:
        """The record in ``run_dir`` if there is one (a resumed run continues it), else an empty one."""
        record = cls(term)
        path = Path(run_dir) / SAMPLE_LOSSES_NAME
        if path.is_file():
            loaded = load_sample_losses(path)
            record.loss_sum, record.count = loaded.loss_sum, loaded.count
        return record


def load_sample_losses(path: str | os.PathLike) -> SampleLossRecord:
    """Read a record written by :meth:`SampleLossRecord.save` (a run directory or the file itself).

    Examples
    --------
    >>> import tempfile
    >>> record = SampleLossRecord()
    >>> record.add(torch.tensor([1]), torch.tensor([2.0]), epoch=0)
    >>> load_sample_losses(record.save(tempfile.mkdtemp())).count.tolist()
    [[0, 1]]
    """
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLE_LOSSES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train with trainer.track_sample_losses=true to record it")
    tensors = load_file(str(path))
    if set(tensors) != {"loss_sum", "count"} or tensors["loss_sum"].shape != tensors["count"].shape:
        raise ValueError(f"{path} is not a sample-loss record (expected loss_sum and count of one shape)")
    record = SampleLossRecord()
    record.loss_sum, record.count = tensors["loss_sum"].double(), tensors["count"].long()
    return record
