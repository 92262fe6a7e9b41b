"""A Ray Tune + Optuna hyperparameter study of a PyTorch MLP on chest X-rays."""

__version__ = "0.1.0"
