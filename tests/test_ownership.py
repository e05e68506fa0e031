"""Files in a directory a command shares with the user: written only when absent or nnlab's own.

A study's outputs (``<kind>_study.csv``, ``<kind>_study.png``, ``<kind>_summary.json``), the
sidecar of its generated particle data and the runs' ``configuration_log.csv`` are recognised by
what nnlab writes into them; anything else is refused before any work, and nothing is written
through a symbolic link out of the command's directory. The command line runs in subprocesses
on tiny real studies.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab._plots import is_nnlab_figure, new_figure, save_figure
from nnlab.errors import ConfigError
from nnlab.runs import check_config_log, check_output_dir
from nnlab.study._summary import check_study_outputs
import _forked

REPO = Path(__file__).resolve().parents[1]
TINY = ("--seeds", "1", "--bits", "24", "--epochs", "1", "--num-particles", "200", "--set", "hidden_layers=[8]",
        "--set", "jit_compile=false", "--set", "tensorboard=false", "--config-dir", str(REPO / "ml_config"))


def nnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return _forked.run([sys.executable, "-m", "nnlab", *args], capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=300, stdin=subprocess.DEVNULL)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): ("link:" + os.readlink(p)) if p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


# --- the configuration log ----------------------------------------------------------------


@pytest.mark.parametrize("content, accepted", [
    (b"", True),
    (b"run_id,timestamp,status,preset\n", True),
    (b"run_id,timestamp,status,an,older,log\nx,y,z,1,2,3\n", True),
    (b"px,py,pz\n1,2,3\n", False),
    (b"run_id,status\n", True),
    (b"run_id,px,py\n", False),
    (b"\xff\xfe\x00binary", False),
], ids=["empty", "header", "older_columns", "particles", "two_log_columns", "other_columns", "binary"])
def test_configuration_log_is_recognised_by_its_header(tmp_path, content, accepted):
    (tmp_path / "configuration_log.csv").write_bytes(content)
    if accepted:
        check_output_dir(tmp_path, create=False)
    else:
        with pytest.raises(ConfigError, match="configuration_log.csv' is not nnlab's configuration log"):
            check_output_dir(tmp_path, create=False)


def test_a_directory_named_like_the_log_is_refused(tmp_path):
    (tmp_path / "configuration_log.csv").mkdir()
    with pytest.raises(ConfigError, match=r"is not nnlab's configuration log \(a directory"):
        check_config_log(tmp_path)


def test_train_refuses_a_foreign_log_before_any_work(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "configuration_log.csv").write_text("px,py,pz\n1,2,3\n")
    before = tree(tmp_path)
    proc = nnlab("train", "--output-dir", "o", "--epochs", "1", "--num-particles", "200", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: --output-dir: 'o/configuration_log.csv' is not nnlab's configuration log" in proc.stderr
    assert tree(tmp_path) == before


# --- the figures ------------------------------------------------------------------------------


def test_figures_carry_nnlabs_mark(tmp_path):
    fig, _ = new_figure(size=(2, 2))
    save_figure(fig, tmp_path / "mine.png")
    assert is_nnlab_figure(tmp_path / "mine.png")
    from matplotlib.figure import Figure

    Figure().savefig(tmp_path / "theirs.png")  # matplotlib's own "Software" text
    (tmp_path / "text.png").write_text("not a PNG")
    assert not is_nnlab_figure(tmp_path / "theirs.png") and not is_nnlab_figure(tmp_path / "text.png")
    assert not is_nnlab_figure(tmp_path / "absent.png")


# --- a study's outputs ------------------------------------------------------------------------


def test_a_link_inside_the_study_directory_is_written_through_one_outside_refused(tmp_path):
    study = tmp_path / "s"
    study.mkdir()
    (study / "kept").mkdir()
    (study / "precision_study.csv").symlink_to(study / "kept" / "table.csv")  # dangling, inside: allowed
    check_study_outputs(study, "precision")
    (tmp_path / "elsewhere.json").write_text("{}")
    (study / "precision_summary.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ConfigError, match=r"precision_summary.json' is a symbolic link to '.*elsewhere.json', "
                                          r"outside"):
        check_study_outputs(study, "precision")


def test_a_study_rewrites_its_own_outputs_and_refuses_a_foreign_figure(tmp_path):
    first = nnlab("study", "precision", *TINY, "--output-dir", "s", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    study = tmp_path / "s"
    outputs = ("precision_study.csv", "precision_study.png", "precision_summary.json")
    assert all((study / name).is_file() for name in outputs)
    assert is_nnlab_figure(study / "precision_study.png")
    check_study_outputs(study, "precision")  # its own files: recognised

    again = nnlab("study", "precision", *TINY, "--output-dir", "s", cwd=tmp_path)  # continued: rewritten
    assert again.returncode == 0, again.stderr

    from matplotlib.figure import Figure

    Figure().savefig(study / "precision_study.png")  # the user's figure in its place
    before = tree(tmp_path)
    refused = nnlab("study", "precision", *TINY, "--output-dir", "s", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert shows(refused.stderr, "error: --output-dir: 's/precision_study.png' exists and is not a file nnlab wrote; "
                 "a precision study writes its figure there")
    assert tree(tmp_path) == before
