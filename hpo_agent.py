"""`python hpo_agent.py [options]` runs the hyperparameter search (same as `nnlab hpo`)."""

import sys

from nnlab.cli import main

if __name__ == "__main__":
    # `--version` alone is nnlab's own option, not the hpo command's.
    sys.exit(main(sys.argv[1:] if sys.argv[1:] == ["--version"] else ["hpo", *sys.argv[1:]]))
