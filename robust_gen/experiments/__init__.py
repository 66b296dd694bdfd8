"""The papers' studies: the study table, the sweep driver, the report.

* :mod:`~robust_gen.experiments.studies`: which overlays make each study, and how its report is laid out;
* :mod:`~robust_gen.experiments.driver`: train the sweep, sample and evaluate every run, write the report
  (``tools/run_experiment.py`` is its command line);
* :mod:`~robust_gen.experiments.report`: run folders -> records -> tables and plots (``tools/report.py``);
* :mod:`~robust_gen.experiments.paired`: the papers' claims as paired differences per seed, with bootstrap
  intervals and a verdict each.
"""
