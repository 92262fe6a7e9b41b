"""A Ray Tune + Optuna hyperparameter study of a PyTorch MLP on chest X-rays.

In a notebook: `study.run(**options)` runs a study and `study.load(path)` reads one from disk;
both return a `StudyResult` (see study.api).
"""

from study.api import StudyResult, load, run

__version__ = "0.1.0"
__all__ = ["StudyResult", "load", "run"]
