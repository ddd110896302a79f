"""`python -m hpsearch` is the same as the `hpsearch` console script."""

import sys

from hpsearch.cli import main

sys.exit(main())
