"""`python -m study` runs the CLI."""

from study.cli.main import main

raise SystemExit(main())
