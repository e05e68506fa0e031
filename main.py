"""`python main.py [options]` runs the nnlab training pipeline (same as `nnlab train`)."""

import sys

from nnlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
