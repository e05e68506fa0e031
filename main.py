"""`python main.py [options]` runs the nnlab training pipeline (same as `nnlab train`)."""

import sys

from nnlab.cli import main

if __name__ == "__main__":
    # `--version` alone is nnlab's own option, not the train command's.
    sys.exit(main(sys.argv[1:] if sys.argv[1:] == ["--version"] else ["train", *sys.argv[1:]]))
