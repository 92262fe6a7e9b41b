"""A Ray Tune + Optuna hyperparameter study of a PyTorch MLP on chest X-rays.

In a notebook: `study.run(**options)` runs a study and `study.load(path)` reads one from disk;
both return a `StudyResult` (see study.cli.api).
"""

from study.cli.api import StudyResult, load, run
from study.core import moved

moved.install()  # experiments pickled before the subpackages name the old module paths

__version__ = "0.1.0"
__all__ = ["StudyResult", "load", "run"]
