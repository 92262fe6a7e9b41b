"""What people use: the `study` command (`main`, `parser`, `commands`), the notebook API
(`api`: `study.run(...)`, `study.load(path)`) and the run-then-report path they share.

The top layer: the only one that reads argv, imports analysis/ or prints for people.
"""
