"""`python -m hpsearch` is the same as the `hpsearch` console script."""

from hpsearch.cli import console

console()
