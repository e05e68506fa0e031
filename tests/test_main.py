"""`python tests/test_main.py` runs the whole test suite (same as `python -m pytest`)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([str(Path(__file__).resolve().parent), *sys.argv[1:]]))
