"""`python -m study` runs the CLI."""

from study.cli.parser import main

raise SystemExit(main())
