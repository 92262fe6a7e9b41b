"""The engine: a study's options and their defaults, its experiment folder, the checks against
the cluster, the Ray session, the trainable, tracking and progress callbacks, and `run_study`
(in `run`), the only starter of Ray.

Beside analysis/, never importing it: the command line writes the report after a run.
"""
