"""`python -m study` runs the CLI."""

from study.cli import main

raise SystemExit(main())
