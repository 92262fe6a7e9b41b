"""Reading finished, partial or copied experiments from disk: tables, statistics, figures and
the report (`study report`).

Imports no Ray and nothing of the engine (import-linter checks it), so it works on a copy of
an experiment without Ray running.
"""
