"""Passwords never written or printed (issue 23): the one redaction path, and every file and output of real commands.

A distinctive password (holding '/', ':' and '@') is planted in storage and MLflow
URLs in every form the drivers accept; train, search and study run with it against a
real PostgreSQL server and against a closed port; every byte written under the working
directory, every row of the databases, and everything printed is searched for it in
every spelling it was given in.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from nnlab._redact import MASK, redact, redact_argv, redact_text
import _forked

REPO = Path(__file__).resolve().parents[1]
ROLE = "pwtester"
SECRET = "Zq/7k@Xw:Vm"  # plain; in a URL's user-info the '@' is written %40
USERINFO_FORM = SECRET.replace("@", "%40")
QUERY_FORM = quote(SECRET, safe="")
# Every spelling, and fragments that only a partly masked password would leave.
LEAKS = [SECRET, USERINFO_FORM, QUERY_FORM, quote(SECRET), "7k@Xw", "7k%40Xw", "Xw:Vm", "Xw%3AVm", "Zq%2F7k"]
TINY = ["--epochs", "1", "--num-particles", "200", "--set", "hidden_layers=[8]", "--set", "jit_compile=false",
        "--set", "tensorboard=false", "--config-dir", str(REPO / "ml_config")]


# ---------------------------------------------------------------- the redaction function

URL_FORMS = [
    ("postgresql+psycopg://user:pa/ss9word@host/db", "pa/ss9word"),
    ("postgresql+psycopg://user:p%40ssword9@host:5432/db", "p%40ssword9"),
    ("postgresql+psycopg://user:p@ss:w/o@rd9@host:5432/db", "ss:w/o@rd9"),
    ("postgresql://host/db?user=u&password=pw%2Fsecret9", "pw%2Fsecret9"),
    ("postgresql://host/db?password=pw@secret9&sslmode=off", "pw@secret9"),
    ("postgresql://u@host:5432/db?sslpassword=keysecret9", "keysecret9"),
    ("mysql+pymysql://root:my:secret9@db/x?charset=utf8", "my:secret9"),
    ("http://alice:h77p/secret9@mlflow.example:5000", "h77p/secret9"),
    ("https://:tokensecret9@mlflow.example", "tokensecret9"),
    ("host=db port=5432 password='with space9' dbname=x", "with space9"),
    ("host=db password=plainsecret9 dbname=x", "plainsecret9"),
    ("PGPASSWORD=envsecret9", "envsecret9"),
    ("MLFLOW_TRACKING_PASSWORD=envsecret8", "envsecret8"),
]


@pytest.mark.parametrize("url, password", URL_FORMS)
def test_every_url_form_is_masked(url, password):
    for shown in (redact_text(url), redact(url), redact_text(f"error: cannot open '{url}': refused"),
                  redact_argv(["--storage", url, f"--set=mlflow_tracking_uri={url}"])):
        assert password not in str(shown), shown
        assert MASK in str(shown)


def test_whole_values_keep_what_is_not_secret():
    assert redact("postgresql+psycopg://user:a b/c@db:5432/hpo") == "postgresql+psycopg://user:***@db:5432/hpo"
    assert redact_text("postgresql://host/db?user=u&password=x%2Fy&sslmode=off") == \
        "postgresql://host/db?user=u&password=***&sslmode=off"
    for plain in ("sqlite:///out/mlflow.db", "http://127.0.0.1:5000", "file:///tmp/mlruns", "out/journal.log",
                  "postgresql://nnlab@db/hpo", "e-mail me@example.org"):
        assert redact(plain) == plain and redact_text(plain) == plain
    assert redact({"config": {"mlflow_tracking_uri": "http://u:pw@h:1", "password": "x", "epochs": 3},
                   "argv": ["--mlflow", "http://u:pw@h:1"]}) == {
        "config": {"mlflow_tracking_uri": "http://u:***@h:1", "password": MASK, "epochs": 3},
        "argv": ["--mlflow", "http://u:***@h:1"]}


def test_a_password_seen_once_is_masked_in_any_later_message():
    redact_text("postgresql+psycopg://u:Seen/Once%40Pw@db/x")
    message = "connection to server failed: password='Seen/Once@Pw' user=u, also Seen%2FOnce%40Pw"
    assert "Seen" not in redact_text(message)


def test_a_masked_url_read_back_connects_without_the_mask():
    from nnlab._redact import without_masked_password

    uri = redact("postgresql+psycopg://u:pa/ss9word@db:5432/x?sslmode=off")
    assert without_masked_password(uri) == "postgresql+psycopg://u@db:5432/x?sslmode=off"
    assert without_masked_password(redact("postgresql://db/x?password=pw%2F99&user=u")) == "postgresql://db/x?user=u"
    assert without_masked_password("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_config_show_masks_the_tracking_password(tmp_path):
    proc = _nnlab(tmp_path, "config", "show", "--config-dir", str(REPO / "ml_config"),
                  "--set", f"mlflow_tracking_uri=postgresql+psycopg://{ROLE}:{USERINFO_FORM}@db/x")
    assert proc.returncode == 0, proc.stderr
    assert f"{ROLE}:***@db/x" in proc.stdout and not _leaks_in(proc.stdout + proc.stderr, "config show")


def test_the_printed_streams_are_masked(capsys):
    from nnlab import _redact

    _redact.install()
    try:
        print("storage postgresql://u:Streamed/pw9@db/x")
        print("error: password=streamed99", file=sys.stderr)
    finally:
        sys.stdout, sys.stderr = sys.stdout._raw, sys.stderr._raw
    out, err = capsys.readouterr()
    assert "Streamed" not in out and "u:***@db" in out
    assert "streamed99" not in err


# ---------------------------------------------------------------- real commands


def _env() -> dict[str, str]:
    # An unreachable MLflow server is given up at once.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def _nnlab(cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return _forked.run([sys.executable, "-m", "nnlab", *args], cwd=cwd, env=_env(), capture_output=True,
                       text=True, timeout=timeout)


def _leaks_in_files(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {leak!r}" for leak in LEAKS if leak.encode() in data]
    return found


def _leaks_in(text: str, where: str) -> list[str]:
    return [f"{where}: {leak!r}" for leak in LEAKS if leak in text]


def _leaks_in_database(server, database: str) -> list[str]:
    """Every row of every table of ``database`` as text, searched for the password."""
    import psycopg

    found = []
    with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", password=server.password,
                         dbname=database, autocommit=True) as connection:
        tables = [r[0] for r in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        for table in tables:
            for (row,) in connection.execute(f'SELECT t::text FROM "{table}" t').fetchall():
                found += _leaks_in(row, f"{database}.{table}")
    return found


@pytest.fixture
def secret_role(postgres_server):
    """A login role whose password is SECRET, and the databases it owns (the search's storage, MLflow's)."""
    import psycopg

    names = {"storage": "sec_storage", "mlflow": "sec_mlflow"}
    with psycopg.connect(host="127.0.0.1", port=postgres_server.port, user="postgres",
                         password=postgres_server.password, dbname="postgres", autocommit=True) as connection:
        connection.execute(f"DROP ROLE IF EXISTS {ROLE}")
        connection.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{SECRET}'")
        for name in names.values():
            connection.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')
    host = f"127.0.0.1:{postgres_server.port}"
    return {"storage": f"postgresql+psycopg://{ROLE}:{USERINFO_FORM}@{host}/{names['storage']}",
            "mlflow": f"postgresql+psycopg://{ROLE}:{USERINFO_FORM}@{host}/{names['mlflow']}",
            "mlflow_query": f"postgresql+psycopg://{ROLE}@{host}/{names['mlflow']}?password={QUERY_FORM}",
            "databases": list(names.values())}


def test_train_search_and_study_with_a_reachable_server_write_and_print_no_password(
        tmp_path, postgres_server, secret_role):
    urls = secret_role
    search = ["hpo", "--max-trials", "1", "--epochs", "1", "--num-particles", "200", "--presets", "fast_debug",
              "--set", "jit_compile=false", "--output-dir", "search", "--storage", urls["storage"],
              "--mlflow", urls["mlflow"]]
    # The study in its own journal (study_journal.log holds its record), tracked through a configuration value.
    study = ["study", "compare", "--variant", "a=activation=relu", "--variant", "b=activation=tanh", "--seeds", "1",
             *TINY, "--output-dir", "study", "--set", f"mlflow_tracking_uri={urls['mlflow']}"]
    results = {
        "train --mlflow": _nnlab(tmp_path, "train", *TINY, "--output-dir", "out", "--mlflow", urls["mlflow"]),
        "train --set": _nnlab(tmp_path, "train", *TINY, "--output-dir", "out2",
                              "--set", f"mlflow_tracking_uri={urls['mlflow_query']}"),
        "hpo": _nnlab(tmp_path, *search),
        "study": _nnlab(tmp_path, *study),
        # The same search and study with the same password-bearing options: recognised, nothing more to run.
        "hpo again": _nnlab(tmp_path, *search),
        "study again": _nnlab(tmp_path, *study),
    }
    for name, proc in results.items():
        assert proc.returncode == 0, f"{name}: {proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
    leaks = [leak for name, proc in results.items() for leak in _leaks_in(proc.stdout + proc.stderr, name)]
    leaks += _leaks_in_files(tmp_path)
    for database in urls["databases"]:
        leaks += _leaks_in_database(postgres_server, database)
    assert not leaks, leaks
    # What was recorded is there, masked: the runs' configurations, the study's journal, the search's storage.
    masked = f"{ROLE}:***@".encode()
    for pattern in ("out/runs/*/training_config.json", "study/*journal*", "search/**/hpo_study.json"):
        assert any(masked in path.read_bytes() for path in tmp_path.glob(pattern)), pattern
    assert any(b"password=***" in path.read_bytes() for path in tmp_path.glob("out2/runs/*/training_config.json"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_servers_print_and_write_no_password(tmp_path):
    host = f"127.0.0.1:{_closed_port()}"
    storage = f"postgresql+psycopg://{ROLE}:{USERINFO_FORM}@{host}/db"
    query = f"postgresql+psycopg://{ROLE}@{host}/db?password={QUERY_FORM}"
    results = {
        # (A database tracking URI is not trained against here: MLflow retries an unreachable database for
        # about 100 s before the run goes on without it; the search and the study below refuse theirs at once.)
        # MLflow's own message names the request's URL, user-info included: the run's files record it masked.
        "train --mlflow http": _nnlab(tmp_path, "train", *TINY, "--output-dir", "out3", "--mlflow",
                                      f"http://{ROLE}:{QUERY_FORM}@{host}/x"),
        "hpo --storage": _nnlab(tmp_path, "hpo", "--max-trials", "1", "--epochs", "1", "--num-particles", "200",
                                "--presets", "fast_debug", "--output-dir", "search", "--storage", storage),
        "hpo ?password=": _nnlab(tmp_path, "hpo", "--max-trials", "1", "--epochs", "1", "--num-particles", "200",
                                 "--presets", "fast_debug", "--output-dir", "search", "--storage", query),
        "study": _nnlab(tmp_path, "study", "compare", "--variant", "a=activation=relu", "--variant",
                        "b=activation=tanh", "--seeds", "1", *TINY, "--output-dir", "study", "--storage", storage,
                        "--mlflow", query),
    }
    for name, proc in results.items():
        assert "Traceback" not in proc.stderr, f"{name}: {proc.stderr}"
    assert results["hpo --storage"].returncode != 0
    leaks = [leak for name, proc in results.items() for leak in _leaks_in(proc.stdout + proc.stderr, name)]
    leaks += _leaks_in_files(tmp_path)
    assert not leaks, leaks
