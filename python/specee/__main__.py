"""`python -m specee ...`: the same command line as the `specee` script."""
import sys

from .cli import main

sys.exit(main())
