"""Other tools' databases are never altered; a search and a study never open each other's studies; a torn
journal is repaired (issue 23). The refusals from the command line are catalogue cases (catalogue_ownership.py).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import optuna
import pytest
from conftest import mounted_tmpfs

from catalogue_ownership import mlflow_like_db, newer_optuna_db, optuna_db, search_journal, study_journal, unrelated_db
from nnlab.errors import ConfigError
from nnlab.integrations._uri import check_tracking_target
from nnlab.orchestration import (
    KIND_ATTR,
    StorageSpec,
    check_storage,
    claim_study,
    open_storage,
    open_study,
    repair_journal,
    storage_spec,
    study_kind,
)
import _forked

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _real_mlflow_db(path: Path) -> None:
    pytest.importorskip("mlflow")
    from nnlab.integrations.mlflow import client_for

    client_for(f"sqlite:///{path}").search_experiments()


# --- databases ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, words", [
    (_real_mlflow_db, "is an MLflow tracking database, not an Optuna storage; Optuna would add its tables"),
    (mlflow_like_db, "is an MLflow tracking database, not an Optuna storage"),
    (unrelated_db, "is a database of another application (tables people), not an Optuna storage"),
    (newer_optuna_db, "is an Optuna storage of a newer schema (v99.0.0.a) (created by Optuna 99.0.0) than this "
                      f"Optuna {optuna.__version__} reads"),
])
def test_storage_refuses_a_database_that_is_not_optunas_and_leaves_it_unchanged(tmp_path, make, words):
    db = tmp_path / "x.db"
    make(db)
    before = _digest(db)
    with pytest.raises(ConfigError, match="^--storage: ") as info:
        check_storage(storage_spec(f"sqlite:///{db}", tmp_path))
    assert words in str(info.value)
    assert _digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_an_older_optuna_schema_is_named_as_such(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    optuna_db(db)
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    connection.close()
    with pytest.raises(ConfigError, match=r"is an Optuna storage of an older schema \(v3.0.0.d\)"):
        check_storage(storage_spec(f"sqlite:///{db}", tmp_path))


def test_storage_accepts_an_optuna_database_and_a_new_one(tmp_path):
    optuna_db(tmp_path / "o.db")
    check_storage(storage_spec(f"sqlite:///{tmp_path / 'o.db'}", tmp_path))
    check_storage(storage_spec(f"sqlite:///{tmp_path / 'new.db'}", tmp_path))
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("make, words", [
    (optuna_db, "is an Optuna storage, not an MLflow tracking database; MLflow would add its tables to it"),
    (unrelated_db, "is a database of another application (tables people), not an MLflow tracking database"),
])
def test_mlflow_refuses_a_database_that_is_not_mlflows_and_leaves_it_unchanged(tmp_path, make, words):
    db = tmp_path / "x.db"
    make(db)
    before = _digest(db)
    with pytest.raises(ConfigError, match="^--mlflow: ") as info:
        check_tracking_target(f"sqlite:///{db}")
    assert words in str(info.value)
    # The sink's own client refuses it too (a tracking URI from the configuration, --set mlflow_tracking_uri).
    from nnlab.integrations.mlflow import client_for

    with pytest.raises(ConfigError, match="^mlflow_tracking_uri: "):
        client_for(f"sqlite:///{db}")
    assert _digest(db) == before


def test_mlflow_accepts_its_own_database(tmp_path):
    mlflow_like_db(tmp_path / "m.db")
    check_tracking_target(f"sqlite:///{tmp_path / 'm.db'}")


def _tables(url: str) -> dict[str, int]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            names = sqlalchemy.inspect(connection).get_table_names()
            return {n: connection.execute(sqlalchemy.text(f'SELECT count(*) FROM "{n}"')).scalar() for n in names}
    finally:
        engine.dispose()


def test_postgresql_database_of_another_tool_is_refused_and_unchanged(postgres_server, postgres_db):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_db)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE experiments (experiment_id integer, name text)"))
        connection.execute(sqlalchemy.text("CREATE TABLE runs (run_uuid text)"))
        connection.execute(sqlalchemy.text("INSERT INTO experiments VALUES (0, 'Default')"))
    engine.dispose()
    before = _tables(postgres_db)
    spec = storage_spec(postgres_db, ".")
    with pytest.raises(ConfigError, match="is an MLflow tracking database, not an Optuna storage") as info:
        check_storage(spec)
    assert "***" in str(info.value) and postgres_db.split("@")[0].split(":")[-1] not in str(info.value)
    assert _tables(postgres_db) == before
    # An Optuna storage on the same server is accepted, and MLflow refuses it.
    spec_optuna = storage_spec(postgres_server.create_database(f"o_{os.getpid()}_{id(spec)}"), ".")
    open_storage(spec_optuna)
    check_storage(spec_optuna)
    with pytest.raises(ConfigError, match="is an Optuna storage, not an MLflow tracking database"):
        check_tracking_target(spec_optuna.location)


# --- a search and a study ------------------------------------------------------------------------------------


def test_a_search_does_not_open_a_study_and_writes_nothing(tmp_path):
    journal = tmp_path / "j.log"
    study_journal(journal)
    before = _digest(journal)
    storage = open_storage(StorageSpec("journal", str(journal)))
    with pytest.raises(ConfigError, match=r"was created by a study \(nnlab study precision\); nnlab hpo does not"):
        open_study(storage, "s", {"epochs": 1}, label=str(journal))
    assert _digest(journal) == before


def test_a_study_does_not_open_a_search(tmp_path):
    journal = tmp_path / "j.log"
    search_journal(journal)
    storage = open_storage(StorageSpec("journal", str(journal)))
    with pytest.raises(ConfigError, match=r"was created by a search \(nnlab hpo\); nnlab study does not open it"):
        claim_study(storage, "s", "study-precision", label="j.log")


def test_a_new_search_is_marked_and_reopened(tmp_path):
    storage = open_storage(StorageSpec("journal", str(tmp_path / "j.log")))
    study = open_study(storage, "s", {"epochs": 1}, label="j.log")
    assert study.user_attrs[KIND_ATTR] == "hpo"
    size = (tmp_path / "j.log").stat().st_size
    assert open_study(storage, "s", {"epochs": 1}, label="j.log").user_attrs[KIND_ATTR] == "hpo"
    assert (tmp_path / "j.log").stat().st_size >= size


def test_study_kinds_of_studies_made_before_the_mark():
    assert study_kind({"nnlab_settings": {}}) == "hpo"
    assert study_kind({"nnlab_study_spec": {"kind": "compare"}}) == "study-compare"
    assert study_kind({KIND_ATTR: "study-precision"}) == "study-precision"
    assert study_kind({"other": 1}) is None


def test_a_plain_optuna_study_with_trials_is_not_taken_over(tmp_path):
    storage = open_storage(StorageSpec("journal", str(tmp_path / "j.log")))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ConfigError, match=r"was created by another program \(it has no nnlab attributes\)"):
        open_study(storage, "s", {}, label="j.log")


# --- torn journals -------------------------------------------------------------------------------------------


def _journal_with_a_trial(path: Path) -> None:
    storage = open_storage(StorageSpec("journal", str(path)))
    study = open_study(storage, "s", {"epochs": 1}, label=str(path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


def test_a_torn_last_line_is_dropped_and_the_original_kept(tmp_path, capsys):
    journal = tmp_path / "j.log"
    _journal_with_a_trial(journal)
    whole = journal.read_bytes()
    torn = whole + b'{"op_code": 4, "worker_id": "x", "trial_id": 1, "par'
    journal.write_bytes(torn)

    storage = open_storage(StorageSpec("journal", str(journal)))
    copies = list(tmp_path.glob("j.log.torn-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == torn
    assert journal.read_bytes() == whole
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1
    assert f"journal '{journal}' ended in a torn line" in err and f"kept in '{copies[0]}'" in err
    # The search continues: a new trial is written after the last whole line and read back.
    study = open_study(storage, "s", {"epochs": 1}, label=str(journal))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    again = optuna.load_study(study_name="s", storage=open_storage(StorageSpec("journal", str(journal))))
    assert len(again.trials) == 2
    assert repair_journal(journal) is None  # whole: nothing to do


def test_a_last_line_with_its_newline_but_not_json_is_torn_too(tmp_path, capsys):
    journal = tmp_path / "j.log"
    _journal_with_a_trial(journal)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 4, "wor\n')
    assert repair_journal(journal) is not None
    assert journal.read_bytes() == whole


def test_a_journal_corrupt_in_the_middle_is_refused_unchanged(tmp_path):
    journal = tmp_path / "j.log"
    _journal_with_a_trial(journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"{garbage\n" + b"".join(lines[1:]))
    before = _digest(journal)
    with pytest.raises(ConfigError, match=r"is corrupt: its line 2 is not an Optuna record"):
        open_storage(StorageSpec("journal", str(journal)))
    assert _digest(journal) == before
    assert not list(tmp_path.glob("j.log.torn-*"))


@pytest.fixture
def small_disk():
    with mounted_tmpfs("64k", "nnlab-full-journal-") as directory:
        yield directory


def test_a_search_whose_journal_filled_the_disk_continues_after_space_is_freed(small_disk, tmp_path):
    journal = small_disk / "j.log"
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 12 * 1024))  # room for about one trial's records (~9 kB each)
    command = [sys.executable, "-m", "nnlab", "hpo", "--max-trials", "3", "--epochs", "1", "--num-particles", "200",
               "--set", "hidden_layers=[8]", "--set", "jit_compile=false", "--set", "tensorboard=false",
               "--output-dir", str(tmp_path / "o"), "--storage", str(journal), "--seed", "1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = _forked.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0, first.stderr
    assert not journal.read_bytes().endswith(b"\n"), "the disk did not fill in the middle of a record"

    filler.unlink()
    second = _forked.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    copies = list(small_disk.glob("j.log.torn-*"))
    assert len(copies) == 1
    assert second.stderr.count("ended in a torn line") == 1 and str(copies[0]) in second.stderr
    assert "3 trials finished" in second.stdout, second.stdout
