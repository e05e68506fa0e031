"""`python hpo_agent.py [options]` runs the hyperparameter search (same as `nnlab hpo`)."""

import sys

from nnlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["hpo", *sys.argv[1:]]))
