"""Find the corrupted samples of a training set: per-sample scores, ranked, checked against the manifest.

The modality-free part of the data audit (``tools/audit.py``): metrics of a score against a corruption manifest
(:mod:`~robust_gen.audit.metrics`), the ranked table, summary and plots of an audit
(:mod:`~robust_gen.audit.report`), and the keep-/relabel-list a recipe reads back as ``data.exclude``
(:mod:`~robust_gen.audit.filters`). The scores themselves need a trained model: :mod:`robust_gen.image.audit`
and :mod:`robust_gen.speech.audit`. See docs/audit.md.
"""

from robust_gen.audit.filters import DataFilter, read_data_filter
from robust_gen.audit.metrics import corrupted_mask, score_metrics
from robust_gen.audit.report import AuditScores, write_audit

__all__ = ["AuditScores", "DataFilter", "corrupted_mask", "read_data_filter", "score_metrics", "write_audit"]
