"""A search and a study on a user's table (issue 24): real training, real Optuna journals, a tiny table.

The table (240 rows) has three numeric features, a text feature of three categories, a row-index
column ('Unnamed: 0') and two targets that are functions of the features. The command line runs in
subprocesses, like tests/test_hpo.py and tests/test_study.py; the refusals are also catalogue cases
(tests/catalogue_tables_search.py).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from catalogue_tables_search import table_text
from nnlab.errors import ConfigError
from nnlab.hpo import SearchSpace
import _forked

REPO = Path(__file__).resolve().parents[1]
# XLA compilation costs more than 2 epochs on 240 rows: off here.
NO_XLA = ("--set", "jit_compile=false")
TINY_SPACE = {"hidden_layers": [[8], [16]], "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}
ROW_INDEX_NOTE = "column 'Unnamed: 0' numbers the rows (a row index); it is left out of the features"


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python hpo_agent.py ...`` or ``nnlab ...`` (as ``python -m nnlab``) in ``cwd``."""
    argv = [str(REPO / "hpo_agent.py"), *args[1:]] if args[0] == "hpo_agent.py" else ["-m", "nnlab", *args]
    return _forked.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=_env(),
                       timeout=timeout, stdin=subprocess.DEVNULL)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def data_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_config.json").read_text(encoding="utf-8"))["data"]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def table_dir(tmp_path) -> Path:
    (tmp_path / "t.csv").write_text(table_text(240), encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One finished search of two trials on the table."""
    root = tmp_path_factory.mktemp("table_search")
    (root / "t.csv").write_text(table_text(240), encoding="utf-8")
    (root / "space.json").write_text(json.dumps(TINY_SPACE), encoding="utf-8")
    proc = run("hpo_agent.py", "--data", "t.csv", "--targets", "y1,y2", "--max-trials", "2", "--epochs", "2",
               "--batch-size", "32", "--space", "space.json", *NO_XLA, "--output-dir", "out", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc


def test_search_trials_train_on_the_table(search):
    root, proc = search
    table = rows(root / "out" / "analysis" / "hpo_results.csv")
    assert [r["trial_number"] for r in table] == ["0", "1"]
    assert all(r["state"] == "complete" for r in table)
    records = [data_record(root / "out" / "runs" / r["run_id"]) for r in table]
    for record in records:
        assert record["kind"] == "csv" and record["task"] == "table"
        assert record["targets"] == ["y1", "y2"] and record["n_rows"] == 240
        assert record["csv_path"] == str((root / "t.csv").resolve())
    assert len({r["arrays_sha256"] for r in records}) == 1  # every trial on the same split
    scalers = json.loads((root / "out" / "runs" / table[0]["run_id"] / "scalers.json").read_text())
    assert scalers["task"] == "table" and scalers["encodings"] == {"kind": ["blue", "green", "red"]}
    assert "Unnamed: 0" not in scalers["columns"]
    # Prepared once, before the first trial: the row-index note is said once for the whole search.
    assert proc.stderr.count(ROW_INDEX_NOTE) == 1
    assert "data t.csv (predicting y1, y2)" in proc.stderr + proc.stdout


def test_search_best_config_keeps_the_table_and_names_the_file(search):
    root, proc = search
    best = json.loads((root / "out" / "analysis" / "best_config.json").read_text())
    assert best["data_targets"] == ["y1", "y2"] and best["physics_loss_weight"] == 0
    # Absolute paths, so the command runs from any directory; " \\" continues a line that would pass 120 columns.
    command = re.sub(r" \\\n\s+", " ", proc.stdout)
    assert (f"nnlab train --config {(root / 'out' / 'analysis' / 'best_config.json').resolve()} "
            f"--data {(root / 't.csv').resolve()}") in command
    study = json.loads((root / "out" / "analysis" / "hpo_study.json").read_text())
    assert study["settings"]["data"]["targets"] == ["y1", "y2"]


def test_rerun_with_other_targets_is_another_search(search):
    root, _ = search
    before = tree(root)
    proc = run("hpo_agent.py", "--data", "t.csv", "--targets", "y1", "--max-trials", "2", "--epochs", "2",
               "--batch-size", "32", "--space", "space.json", *NO_XLA, "--output-dir", "out", cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "nnlab-hpo" in proc.stderr
    assert tree(root) == before


def test_study_precision_on_the_table(table_dir):
    proc = run("study", "precision", "--data", "t.csv", "--targets", "y1,y2", "--bits", "4", "--rounding",
               "truncate,stochastic", "--seeds", "2", "--epochs", "2", "--set", "hidden_layers=[8]",
               "--set", "batch_size=32", *NO_XLA, "--output-dir", "s", cwd=table_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = table_dir / "s"
    units = rows(study / "precision_runs.csv")
    assert len(units) == 6 and {u["status"] for u in units} == {"completed"}
    records = {(u["rounding"], u["seed"]): data_record(Path(u["run_dir"])) for u in units}
    for record in records.values():
        assert record["task"] == "table" and record["targets"] == ["y1", "y2"] and record["kind"] == "csv"
    # The cells of a seed share its split; the seeds split differently.
    for seed in ("0", "1"):
        assert len({r["arrays_sha256"] for (_, s), r in records.items() if s == seed}) == 1
    assert records[("none", "0")]["arrays_sha256"] != records[("none", "1")]["arrays_sha256"]
    summary = json.loads((study / "precision_summary.json").read_text())
    assert summary["kind"] == "precision" and (study / "precision_study.png").is_file()
    assert not (study / "particles.csv").exists()  # the table is used as found: nothing simulated
    assert proc.stderr.count(ROW_INDEX_NOTE) == 2  # checked once at plan time (seed 0), then seed 1's split


@pytest.mark.parametrize("args, fragment", [
    (("hpo_agent.py", "--data", "t.csv", "--targets", "y1", "--features", "a,kind,zz"),
     "--features (data_features): no column 'zz' in the table"),
    (("hpo_agent.py", "--data", "t.csv", "--targets", "y1", "--set", "physics_loss_weight=2"),
     "physics_loss_weight = 2: the physics-informed loss applies to the particle task only"),
    (("hpo_agent.py", "--features", "a"), "data_features chooses the input columns of a --data table"),
    (("study", "compare", "--variant", "a=", "--variant", "b=data_drop_missing=true", "--data", "t.csv",
      "--targets", "y1"), "--variant b: data_drop_missing chooses the data, which every cell of a study shares"),
    (("study", "precision", "--bits", "4", "--data", "t.csv", "--targets", "kind"),
     "target column 'kind' is not numeric (it holds text, e.g. 'red'); a target must be a number"),
])
def test_refused_before_anything_is_written(table_dir, args, fragment):
    before = tree(table_dir)
    proc = run(*args, "--output-dir", "o", cwd=table_dir)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert fragment in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
    assert tree(table_dir) == before  # no journal, no analysis directory, no run


def test_space_upper_bound():
    space = SearchSpace({"physics_loss_weight": {"low": 0.0, "high": 0.3}, "dropout_rate": [0.1, 0.2],
                         "learning_rate": 0.01})
    assert space.upper_bound("physics_loss_weight") == 0.3
    assert space.upper_bound("dropout_rate") == 0.2
    assert space.upper_bound("learning_rate") == 0.01
    assert space.upper_bound("epochs") is None


@pytest.mark.parametrize("key, value", [("data_targets", [["y1"], ["y2"]]), ("data_drop_missing", [True, False])])
def test_space_may_not_choose_the_table(key, value):
    with pytest.raises(ConfigError, match=f"{key}: changes the data, which is prepared once per search"):
        SearchSpace({key: value})


def test_search_api_refuses_a_table_space_with_the_physics_loss(table_dir):
    from nnlab.hpo import run_search

    with pytest.raises(ConfigError, match="physics_loss_weight samples values up to 1"):
        run_search(data=str(table_dir / "t.csv"), overrides={"data_targets": ["y1"]}, max_trials=1,
                   space={"physics_loss_weight": [0.0, 1.0]}, output_dir=str(table_dir / "o"), verbose=False)
    assert not (table_dir / "o").exists()
