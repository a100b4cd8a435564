"""`python -m nas ...`: the `nas` command where its console script is not installed (e.g. a GPU machine with the
repository on PYTHONPATH)."""

from nas.cli import entry

entry()
