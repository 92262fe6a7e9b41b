"""The `study` command's entry point: parse argv, run the command, one line for bad input.

The `study.cli` package (this entry point, `parser`, `commands`, `jobs` for the cluster job
files, and the notebook API `api`) is the only place that reads argv, imports `analysis/` or
prints for people; `run` starts Ray through `study.engine.run`. Bad input raises StudyError
anywhere below; it is printed here as one line and the exit status is 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from study.cli.parser import build_parser
from study.core.secrets import redact
from study.errors import StudyError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from study.cli import commands as cli_commands
    from study.cli import jobs

    args.command_line = redact("study " + " ".join(sys.argv[1:] if argv is None else argv))
    commands = {"train": cli_commands.cmd_train, "evaluate": cli_commands.cmd_evaluate,
                "run": cli_commands.cmd_run, "report": cli_commands.cmd_report,
                "slurm": jobs.cmd_slurm, "kuberay": jobs.cmd_kuberay}
    try:
        return commands[args.command](args)
    except StudyError as exc:
        print(f"study: error: {redact(str(exc))}", file=sys.stderr)
        return 2
