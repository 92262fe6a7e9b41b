"""The training floor, PyTorch alone: data specs and splits, the models (plain and stacked
over seeds), losses, metrics, the training loop, the CUDA-graph step, checkpoints and export.

Never imports Ray, Optuna or a layer above (import-linter checks it): `study train` runs it
without Ray, and a Ray Tune trial runs the same `fit`.
"""
