"""What a study searches: YAML spaces (schema, Optuna's define-by-run form, Ray Tune's
domains and grids), the Optuna searcher told about early stopping, seeds on demand and its
stopping rule.

Imports the training floor (a space is checked against `TrialConfig`), never the engine.
"""
