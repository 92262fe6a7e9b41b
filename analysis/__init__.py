"""Reading finished, partial or copied experiments from disk: tables, statistics, figures."""
