"""Image evaluation: FID / KID / precision-recall, conditional accuracy, resilience, the offline domain classifier.

* :mod:`~robust_gen.image.eval.metrics`: a run's samples scored against references (``evaluate.py``);
* :mod:`~robust_gen.image.eval.fidelity`: torch-fidelity with a registered feature extractor;
* :mod:`~robust_gen.image.eval.classifier`: the domain classifier (features and conditional accuracy);
* :mod:`~robust_gen.image.eval.samples`: reading sample folders written by ``sample.py``.
"""
