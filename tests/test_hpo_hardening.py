"""HPO never replaces a file its study did not write, refuses files that are not storages,
and caps its workers; all refusals happen before any trial (no training here)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab.config import Config
from nnlab.errors import ConfigError
from nnlab.hpo import RESULT_COLUMNS, SearchSettings
from nnlab.hpo import _results
from nnlab.hpo._results import ResultPaths, check_results_owner, write_results
from nnlab.hpo._search import plan_search, run_search
from nnlab.orchestration import StorageSpec, cap_workers, check_storage, open_storage, open_study, storage_spec
import _forked

REPO = Path(__file__).resolve().parents[1]
PARTICLES = "particle_id,mass,charge\n0,1.0,1.0\n"
LABEL = "test-storage"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_study(root: Path, name: str = "s"):
    storage = open_storage(storage_spec(None, root))
    return open_study(storage, name, {"epochs": 2}, label=LABEL)


def add_trial(study, value: float) -> None:
    trial = study.ask()
    config = Config.from_flat({"learning_rate": round(0.001 + value / 100, 6)}).to_flat()
    for key, attr in {"preset": "baseline", "overrides": {}, "config": config, "metrics": {"best_r2": value},
                      "duration_s": 1.0, "run_id": f"r{trial.number}", "outcome": "complete"}.items():
        trial.set_user_attr(key, attr)
    study.tell(trial, value)


@pytest.fixture
def written(tmp_path):
    """A study with one completed trial whose results were written; returns (study, paths)."""
    study = make_study(tmp_path)
    add_trial(study, 0.5)
    paths = ResultPaths(tmp_path / "analysis" / "hpo_results.csv")
    write_results(study, paths, storage_label=LABEL)
    return study, paths


def record(paths: ResultPaths) -> dict:
    return json.loads(paths.study_file.read_text())


# --- ownership of the result files -----------------------------------------------------------------


def test_record_holds_the_digest_of_each_file_written(written):
    study, paths = written
    assert record(paths)["files"] == {"hpo_results.csv": [sha256(paths.results)],
                                      "best_config.json": [sha256(paths.best_config)]}
    check_results_owner(paths, "s", LABEL)  # ours: accepted
    add_trial(study, 0.7)
    before = paths.results.read_bytes()
    write_results(study, paths, storage_label=LABEL)  # rewritten, the record follows
    assert paths.results.read_bytes() != before
    assert record(paths)["files"] == {"hpo_results.csv": [sha256(paths.results)],
                                      "best_config.json": [sha256(paths.best_config)]}
    assert json.loads(paths.best_config.read_text())["learning_rate"] == 0.008


@pytest.mark.parametrize("content", [PARTICLES, ",".join(RESULT_COLUMNS) + "\n", "my notes\n", ""])
def test_a_file_the_study_did_not_write_is_never_replaced(tmp_path, content):
    study = make_study(tmp_path)
    add_trial(study, 0.5)
    target = tmp_path / "results.csv"
    target.write_text(content)
    paths = ResultPaths(target)
    expected = (f"--output: '{target}' exists and was not written by study 's' ({LABEL}); choose another "
                "--output or move the file")
    with pytest.raises(ConfigError) as info:
        check_results_owner(paths, "s", LABEL)
    assert str(info.value) == expected
    with pytest.raises(ConfigError, match="was not written by study 's'"):
        write_results(study, paths, storage_label=LABEL)
    assert target.read_text() == content
    assert not paths.best_config.exists() and not paths.study_file.exists()


def test_user_edited_best_config_is_refused(written):
    study, paths = written
    paths.best_config.write_text('{"epochs": 500}\n')
    with pytest.raises(ConfigError) as info:
        check_results_owner(paths, "s", LABEL)
    assert str(info.value) == (f"--output: '{paths.best_config}' (written beside the results) was changed after "
                               f"study 's' ({LABEL}) wrote it; choose another --output or move the file")
    with pytest.raises(ConfigError):
        write_results(study, paths, storage_label=LABEL)
    assert paths.best_config.read_text() == '{"epochs": 500}\n'


def test_results_edited_during_the_search_are_not_overwritten(written):
    study, paths = written
    with open(paths.results, "a") as fh:
        fh.write("my own row\n")
    add_trial(study, 0.9)
    with pytest.raises(ConfigError, match="hpo_results.csv' was changed after study 's'"):
        write_results(study, paths, storage_label=LABEL)
    assert paths.results.read_text().endswith("my own row\n")


def test_results_without_their_record_are_refused(written):
    _, paths = written
    paths.study_file.unlink()
    with pytest.raises(ConfigError, match="hpo_results.csv' exists and was not written by study 's'"):
        check_results_owner(paths, "s", LABEL)


@pytest.mark.parametrize("content, reason", [
    ("not json", "not valid JSON at line 1, column 1"),
    ("[1, 2]", "must contain a JSON object"),
    ('{"study_name": "s", "storage": "test-storage"}', "it lacks the study name, storage and file digests"),
    ('{"study_name": "s", "storage": "test-storage", "files": {"x": "abc"}}', "it lacks the study name"),
])
def test_a_study_record_that_is_not_ours_is_refused(tmp_path, content, reason):
    paths = ResultPaths(tmp_path / "hpo_results.csv")
    paths.study_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        check_results_owner(paths, "s", LABEL)
    assert str(info.value).startswith(f"--output: '{paths.study_file}' (written beside the results) exists and is "
                                      "not a study record of nnlab hpo (")
    assert reason in str(info.value)
    assert paths.study_file.read_text() == content


def test_another_study_or_storage_is_refused(written):
    _, paths = written
    with pytest.raises(ConfigError, match="holds the results of study 's' \\(test-storage\\), not 'other'"):
        check_results_owner(paths, "other", LABEL)
    with pytest.raises(ConfigError, match="holds the results of study 's' \\(test-storage\\), not 's' \\(elsewhere"):
        check_results_owner(paths, "s", "elsewhere")


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_special_files_at_the_targets_are_refused(tmp_path, kind):
    paths = ResultPaths(tmp_path / "hpo_results.csv")
    if kind == "symlink":
        (tmp_path / "elsewhere.csv").write_text(PARTICLES)
        paths.best_config.symlink_to(tmp_path / "elsewhere.csv")
        words = "a symbolic link"
    elif kind == "fifo":
        os.mkfifo(paths.results)
        words = "a named pipe"
    else:
        paths.study_file.mkdir()
        words = "a directory"
    with pytest.raises(ConfigError, match=f"is {words}, not a file this study wrote"):
        check_results_owner(paths, "s", LABEL)


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_search_killed_between_writes_still_owns_its_files(written, monkeypatch, killed_at):
    """The record is written first and names old and new digests: any prefix of the writes is consistent."""
    study, paths = written
    add_trial(study, 0.9)  # the CSV and best_config.json both change
    real_write = _results.atomic_write
    calls = []

    def dying_write(path, write, **kwargs):
        calls.append(path)
        if len(calls) == killed_at:
            raise KeyboardInterrupt  # as if killed before this file was replaced
        return real_write(path, write, **kwargs)

    monkeypatch.setattr(_results, "atomic_write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_results(study, paths, storage_label=LABEL)
    assert len(record(paths)["files"]["hpo_results.csv"]) == 2  # the claim: old and new
    check_results_owner(paths, "s", LABEL)  # every file there is still recognised
    monkeypatch.setattr(_results, "atomic_write", real_write)
    write_results(study, paths, storage_label=LABEL)  # the rerun replaces them
    assert record(paths)["files"] == {"hpo_results.csv": [sha256(paths.results)],
                                      "best_config.json": [sha256(paths.best_config)]}


def test_concurrent_writers_keep_the_record_consistent(tmp_path):
    make_study(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_hpo_hardening import add_trial, make_study, LABEL
        from nnlab.hpo._results import ResultPaths, write_results
        study = make_study(Path({str(tmp_path)!r}))
        paths = ResultPaths(Path({str(tmp_path)!r}) / "analysis" / "hpo_results.csv")
        for i in range(5):
            add_trial(study, 0.1 * i + 0.01 * int(sys.argv[1]))
            write_results(study, paths, storage_label=LABEL)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], stderr=subprocess.PIPE, text=True)
             for n in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    paths = ResultPaths(tmp_path / "analysis" / "hpo_results.csv")
    check_results_owner(paths, "s", LABEL)
    assert record(paths)["files"]["hpo_results.csv"] == [sha256(paths.results)]
    assert len(paths.results.read_text().splitlines()) == 1 + 15


def test_output_names_that_collide_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="has the name of a file the search writes beside the results"):
        ResultPaths(tmp_path / "best_config.json")
    with pytest.raises(ConfigError, match="is also where the search writes --output"):
        plan_search(SearchSettings(output=str(tmp_path / "x.log"), storage=str(tmp_path / "x.log"),
                                   output_dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match="is the runs' configuration log of --output-dir"):
        plan_search(SearchSettings(output=str(tmp_path / "out" / "configuration_log.csv"),
                                   output_dir=str(tmp_path / "out")))


def test_run_search_refuses_before_creating_anything(tmp_path):
    target = tmp_path / "particles.csv"
    target.write_text(PARTICLES)
    with pytest.raises(ConfigError, match="particles.csv' exists and was not written by study 'nnlab-hpo'"):
        run_search(output=str(target), output_dir=str(tmp_path / "out"), verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["particles.csv"]  # no journal, no lock file
    assert target.read_text() == PARTICLES


# --- storage files -----------------------------------------------------------------------------------


def _journal(path: Path) -> None:
    from optuna.storages.journal import JournalFileBackend

    optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(path))), study_name="j")


def _sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")


@pytest.mark.parametrize("make", [None, "", _journal])
def test_journal_storage_files_that_are_accepted(tmp_path, make):
    path = tmp_path / "j.log"
    if make is not None:
        path.write_text("") if make == "" else make(path)
    check_storage(StorageSpec("journal", str(path)))


def _optuna_sqlite(path: Path) -> None:
    optuna.create_study(storage=f"sqlite:///{path}", study_name="s")


# A SQLite file with another application's tables is refused (issue 23): tests/test_storage_safety.py.
@pytest.mark.parametrize("make", [None, "", _optuna_sqlite])
def test_sqlite_files_that_are_accepted(tmp_path, make):
    path = tmp_path / "h.db"
    if make is not None:
        path.write_text("") if make == "" else make(path)
    check_storage(storage_spec(f"sqlite:///{path}", tmp_path))


@pytest.mark.parametrize("content, words", [
    (PARTICLES, "is not an Optuna journal file (a journal's lines are Optuna's JSON records"),
    ("random text\n", "is not an Optuna journal file"),
    ('{"a": 1}\n', "is not an Optuna journal file"),
    (b"\xff\xfe\x00binary", "is not an Optuna journal file"),
    (_sqlite, "is a SQLite database, not an Optuna journal file; pass --storage sqlite:///"),
    ("<directory>", "is a directory, not an Optuna journal file"),
    ("<fifo>", "is a named pipe, not an Optuna journal file"),
])
def test_journal_file_that_is_not_a_journal(tmp_path, content, words):
    path = tmp_path / "store"
    if content == "<directory>":
        path.mkdir()
    elif content == "<fifo>":
        os.mkfifo(path)
    elif callable(content):
        content(path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as info:
        check_storage(StorageSpec("journal", str(path)))
    assert str(info.value).startswith(f"--storage: '{path}' ") and words in str(info.value)


def test_sqlite_url_to_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(PARTICLES)
    with pytest.raises(ConfigError, match=r"'.*data.csv' is not a SQLite database \(it does not start with "
                                          r"'SQLite format 3'\)"):
        check_storage(storage_spec(f"sqlite:///{path}", tmp_path))
    with pytest.raises(ConfigError, match="is a directory, not a SQLite database"):
        check_storage(storage_spec(f"sqlite:///{tmp_path}", tmp_path))


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_storage_cannot_be_shared_by_workers(tmp_path, url):
    assert storage_spec(url, tmp_path).per_process and storage_spec(url, tmp_path).sqlite_path is None
    with pytest.raises(ConfigError, match=r"is an in-memory database that each process opens empty, so "
                                          r"--workers 2 could not share it"):
        plan_search(SearchSettings(storage=url, workers=2, output_dir=str(tmp_path / "out")))
    # One worker: allowed, and each search is its own study (its results are never taken for ours).
    labels = {plan_search(SearchSettings(storage=url, output_dir=str(tmp_path / "out"))).storage.label
              for _ in range(2)}
    assert len(labels) == 2 and all(label.startswith(f"{url} [process {os.getpid()}, search ") for label in labels)


def test_in_memory_storage_runs_one_worker_and_never_claims_earlier_results(tmp_path):
    """One worker uses the storage its process opened; a second search is a new study, so it refuses
    to replace the first one's results instead of overwriting them with its own."""
    options = dict(max_trials=1, epochs=1, num_particles=200, batch_size=32, presets=["fast_debug"],
                   space={"hidden_layers": [[8]]}, storage="sqlite:///:memory:", overrides={"jit_compile": False},
                   output_dir=str(tmp_path / "out"), verbose=False)
    summary = run_search(**options)
    assert summary.counts["complete"] == 1
    results = summary.results_path.read_bytes()
    with pytest.raises(ConfigError, match=r"hpo_results.csv holds the results of study 'nnlab-hpo' "
                                          r"\(sqlite:///:memory: \[process \d+, search \w+\]\), not"):
        run_search(**options)
    assert summary.results_path.read_bytes() == results


# --- workers and seed ----------------------------------------------------------------------------------


def test_cap_workers():
    assert cap_workers(8, 10, cpus=2) == (2, "this machine has 2 CPUs available")
    assert cap_workers(8, 3, cpus=16) == (3, "only 3 trials are left to run")
    assert cap_workers(8, 1, cpus=4) == (1, "this machine has 4 CPUs available; only 1 trial is left to run")
    assert cap_workers(2, 5, cpus=2) == (2, "")


def test_run_search_starts_at_most_one_worker_per_cpu_and_trial(tmp_path, monkeypatch, capsys):
    import nnlab.hpo._search as search
    import nnlab.orchestration._pool as pool

    started = []
    monkeypatch.setattr(pool, "available_cpus", lambda: 2)
    monkeypatch.setattr(search, "run_workers", lambda workers, **kw: started.append(workers) or [])
    run_search(max_trials=3, workers=64, output_dir=str(tmp_path / "a"))
    run_search(max_trials=1, workers=2, output_dir=str(tmp_path / "b"))
    assert started == [2, 1]
    out = capsys.readouterr().out
    assert "--workers 64 capped to 2: this machine has 2 CPUs available\n" in out
    assert "--workers 2 capped to 1: only 1 trial is left to run\n" in out
    assert "; 2 workers\n" in out and "; 1 worker\n" in out


@pytest.mark.parametrize("seed", [-1, 2**32, True])
def test_seed_outside_numpy_range_is_refused(tmp_path, seed):
    with pytest.raises(ConfigError, match=r"--seed must be an integer from 0 to 2\*\*32 - 1 = 4294967295"):
        plan_search(SearchSettings(seed=seed, output_dir=str(tmp_path)))


# --- command line: exit 2, the message, nothing changed ------------------------------------------


def listing(root: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir" if p.is_dir() else "special"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("args, files, expected", [
    (["--output", "data.csv"], {"data.csv": PARTICLES},
     "error: --output: 'data.csv' exists and was not written by study 'nnlab-hpo' ("),
    (["--output", "old/configuration_log.csv"], {"old/configuration_log.csv": "run_id,preset\nr1,baseline\n"},
     "error: --output: 'old/configuration_log.csv' exists and was not written by study 'nnlab-hpo'"),
    (["--output-dir", "o"], {"o/analysis/best_config.json": '{"epochs": 3}\n'},
     "error: --output: 'o/analysis/best_config.json' (written beside the results) exists and was not written"),
    (["--output", "r/res.csv"], {"r/hpo_study.json": "{broken"},
     "error: --output: 'r/hpo_study.json' (written beside the results) exists and is not a study record"),
    (["--storage", "data.csv"], {"data.csv": PARTICLES},
     "error: --storage: 'data.csv' is not an Optuna journal file"),
    (["--storage", "sqlite:///data.csv"], {"data.csv": PARTICLES},
     "error: --storage: 'data.csv' is not a SQLite database"),
    (["--storage", "sqlite:///:memory:", "--workers", "2"], {},
     "error: --storage: 'sqlite:///:memory:' is an in-memory database"),
    (["--seed", "-1"], {}, "argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got -1"),
])
def test_cli_refusals_change_nothing(tmp_path, args, files, expected):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    before = listing(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    proc = _forked.run([sys.executable, str(REPO / "hpo_agent.py"), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert shows(proc.stderr, expected) and "Traceback" not in proc.stderr, proc.stderr
    assert listing(tmp_path) == before


def test_results_csv_cells_cannot_start_a_formula():
    text = _results._csv_bytes([{"trial_number": 0, "preset": "=HYPERLINK(\"x\")", "error": "@SUM(A1)",
                                 "test_r2": -0.5}]).decode()
    row = text.splitlines()[1]
    assert "'=HYPERLINK" in row and "'@SUM(A1)" in row and ",-0.5," in row
