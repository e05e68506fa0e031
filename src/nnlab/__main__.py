"""`python -m nnlab ...` runs the nnlab command line (same as `nnlab ...`)."""

import sys

from nnlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
