"""The one error type for bad user input."""

from __future__ import annotations


class StudyError(Exception):
    """Bad user input; the CLI prints the message on one line and exits 2."""
