"""The shared core, below every layer: file names and statuses, atomic files, display, Ray's
private names (one adapter), and the old module paths of earlier experiments' pickles.

Imports nothing of the package's layers (import-linter checks it); no PyTorch, no Optuna.
"""
