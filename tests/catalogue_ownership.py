"""Bad-input catalogue cases of issue 23: files and databases that are not nnlab's, journals (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def mlflow_like_db(path) -> None:
    """A SQLite file with MLflow's tables (experiments, runs, alembic_version)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER)")
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        db.execute("INSERT INTO alembic_version VALUES ('4465047574b1')")
    db.close()


def unrelated_db(path) -> None:
    """A SQLite file of another application (a table `people`)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (name TEXT)")
        db.execute("INSERT INTO people VALUES ('ada')")
    db.close()


def optuna_db(path) -> None:
    """An Optuna storage (SQLite) holding study 's'."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{path}", study_name="s")


def newer_optuna_db(path) -> None:
    """An Optuna storage (SQLite) whose schema revision (v99.0.0.a) is newer than this Optuna's."""
    import sqlite3

    optuna_db(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'v99.0.0.a'")
        db.execute("UPDATE version_info SET library_version = '99.0.0'")
    db.close()


def _journal_with(path, attrs: dict[str, Any]) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s",
                                direction="maximize")
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    Path(str(path) + ".lock").unlink(missing_ok=True)


def study_journal(path) -> None:
    """The journal of an nnlab study 's' (precision): its spec record, no nnlab_kind (made before that mark)."""
    _journal_with(path, {"nnlab_study_spec": {"kind": "precision", "seeds": [0]}})


def search_journal(path) -> None:
    """The journal of an nnlab search 's' (hpo), marked nnlab_kind=hpo."""
    _journal_with(path, {"nnlab_kind": "hpo", "nnlab_settings": {"epochs": 1}})


def corrupt_journal(path) -> None:
    """A journal whose second of three lines is not a JSON record (corrupt in the middle, not torn at the end)."""
    _journal_with(path, {"nnlab_kind": "hpo"})
    lines = Path(path).read_text().splitlines(keepends=True)
    Path(path).write_text(lines[0] + "{garbage\n" + "".join(lines[1:]))


_HPO = "nnlab hpo --max-trials 1 --epochs 1 --num-particles 200 --output-dir o"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("databases", f"{_HPO} --storage sqlite:///ml.db", {"ml.db": mlflow_like_db},
     ["error: --storage: 'sqlite:///ml.db' is an MLflow tracking database, not an Optuna storage; Optuna would add "
      "its tables to it. Give a new or empty database, or an Optuna storage"]),
    ("databases", f"{_HPO} --storage sqlite:///app.db", {"app.db": unrelated_db},
     ["error: --storage: 'sqlite:///app.db' is a database of another application (tables people), not an Optuna "
      "storage"]),
    ("databases", f"{_HPO} --storage sqlite:///notes.db", {"notes.db": "my notes\n"},
     ["error: --storage: 'notes.db' is not a SQLite database (it does not start with 'SQLite format 3')"]),
    ("databases", f"{_HPO} --storage sqlite:///new.db", {"new.db": newer_optuna_db},
     ["error: --storage: 'sqlite:///new.db' is an Optuna storage of a newer schema (v99.0.0.a) (created by Optuna "
      "99.0.0) than this Optuna", "upgrade optuna (pip install -U optuna) or give another --storage"]),
    ("databases", "python main.py --mlflow sqlite:///opt.db --epochs 1 --output-dir o", {"opt.db": optuna_db},
     ["error: --mlflow: 'sqlite:///opt.db' is an Optuna storage, not an MLflow tracking database; MLflow would add "
      "its tables to it. Give a new or empty database, or an MLflow one"]),
    ("databases", f"{_HPO} --mlflow sqlite:///app.db", {"app.db": unrelated_db},
     ["error: --mlflow: 'sqlite:///app.db' is a database of another application (tables people), not an MLflow "
      "tracking database"]),
    ("databases", f"{_HPO} --storage j.log --study-name s", {"j.log": study_journal},
     ["error: --study-name: study 's' in ", "j.log was created by a study (nnlab study precision); nnlab hpo does not "
      "open it, so that neither mixes its trials into the other. Choose another --study-name or --storage"]),
    ("databases", "nnlab study precision --bits 24,8 --seeds 1 --epochs 1 --num-particles 200 --output-dir o "
     "--storage j.log --study-name s", {"j.log": search_journal},
     ["error: --study-name: study 's' in ", "was created by a search (nnlab hpo); nnlab study does not open it"]),
    ("journals", f"{_HPO} --storage j.log", {"j.log": corrupt_journal},
     ["error: --storage: journal '", "j.log' is corrupt: its line 2 is not an Optuna record, and only a torn last "
      "line can be dropped; restore the journal from a copy or give another --storage"]),
]
