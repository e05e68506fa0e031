"""The command line by the shell's conventions (issue 26): ``--version``, a description on every
command's help, one metavar style, shell completion, every printed line within 120 columns, a
retrain hint that works from any directory, and TOML configuration files.

Commands run as real subprocesses (COLUMNS=200, so nothing fits only because the terminal is
narrow) or in-process through :func:`nnlab.cli.main`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nnlab
from nnlab.cli import build_parser, main
import _forked

REPO = Path(__file__).resolve().parents[1]
WIDTH = 120


def run(*argv: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """``argv`` (``nnlab ...``, ``python main.py ...``) in a subprocess on a 200-column "terminal"."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200"}
    env.pop("NNLAB_CONFIG_DIR", None)
    if argv[0] == "nnlab":
        command = [sys.executable, "-m", "nnlab.cli", *argv[1:]]
    else:
        command = [sys.executable, str(REPO / argv[0]), *argv[1:]]
    return _forked.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                       stdin=subprocess.DEVNULL)


def assert_fits(text: str, what: str) -> None:
    wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not wide, f"{what}: {len(wide)} line(s) over {WIDTH} columns:\n" + "\n".join(wide)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("nnlab",)):
    """(command path, parser) of ``nnlab`` and of every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


ALL_COMMANDS = list(commands(build_parser()))


# --- --version and abbreviations ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [("nnlab", "--version"), ("main.py", "--version"), ("hpo_agent.py", "--version")])
def test_version_prints_nnlab_and_the_installed_version(argv):
    proc = run(*argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"nnlab {importlib.metadata.version('nnlab')}\n"
    assert nnlab.__version__ == importlib.metadata.version("nnlab")


def test_no_parser_accepts_abbreviations():
    assert [" ".join(path) for path, parser in ALL_COMMANDS if parser.allow_abbrev] == []


@pytest.mark.parametrize("argv, unrecognized", [
    (["--vers"], None),  # not --verbose, and not --version either
    (["train", "--epoch", "2"], "--epoch 2"),
    (["train", "--verb"], "--verb"),
    (["hpo", "--max-trial", "2"], "--max-trial 2"),
])
def test_an_abbreviated_option_is_an_error(argv, unrecognized, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "nnlab" not in out  # no version, no run
    if unrecognized:
        assert f"error: unrecognized arguments: {unrecognized}" in err


# --- help: descriptions and metavars --------------------------------------------------------------


@pytest.mark.parametrize("path, parser", ALL_COMMANDS, ids=[" ".join(path) for path, _ in ALL_COMMANDS])
def test_every_command_has_a_description_in_its_help(path, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    description = " ".join((parser.description or "").split())
    assert len(description) >= 30 and description[0].isupper(), (path, parser.description)
    shown = parser.format_help()
    assert description in " ".join(shown.split())
    # The description is a paragraph of its own between the usage and the options.
    assert re.search(r"\n\n[A-Z][^\n]+(\n[^\n]+)*\n\n", shown), shown
    assert_fits(shown, " ".join(path) + " --help")


def test_train_help_in_a_subprocess_has_its_description():
    proc = run("nnlab", "train", "--help")
    assert proc.returncode == 0
    assert "Train one network" in proc.stdout and "options:" in proc.stdout
    assert_fits(proc.stdout, "nnlab train --help")


# Kinds of value (N for counts, FILE/DIR/PATH, URI, NAME, RUN_ID, KEY=VALUE, SECONDS), a list of
# one kind (N[,N...]), a role's file (CLEAN_FILE), alternatives (URL|FILE), or the choices {a,b}.
KINDS = {"N", "SECONDS", "FILE", "DIR", "PATH", "URI", "NAME", "RUN_ID", "KEY=VALUE", "COL"}
SPECIAL = {"URL|FILE", 'NAME="KEY=VALUE ..."'}


def metavar_ok(metavar: str) -> bool:
    if metavar in KINDS or metavar in SPECIAL:
        return True
    if re.fullmatch(r"\{[a-z0-9_]+(,[a-z0-9_]+)+\}", metavar):  # the choices, as argparse shows them
        return True
    listed = re.fullmatch(r"([A-Z_]+)\[,\1\.\.\.\]", metavar)
    return bool(listed and listed[1] in KINDS) or bool(re.fullmatch(r"[A-Z]+_(FILE|DIR)", metavar))


def test_one_metavar_style_for_every_option():
    problems = []
    for path, parser in ALL_COMMANDS:
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._VersionAction):
                continue
            if action.metavar is None and action.choices is None:
                problems.append(f"{' '.join(path)} {action.option_strings[-1]}: argparse's default "
                                f"{action.dest.upper()}")
            elif action.metavar is not None and not metavar_ok(action.metavar):
                problems.append(f"{' '.join(path)} {action.option_strings[-1]}: {action.metavar}")
    assert problems == []
    assert metavar_ok("N[,N...]") and metavar_ok("{step,epoch}") and not metavar_ok("EPOCHS")
    assert not metavar_ok("A,B") and not metavar_ok("K")


# --- shell completion -----------------------------------------------------------------------------


def test_bash_completion_script_knows_the_commands_and_options(tmp_path):
    proc = run("nnlab", "completion", "bash")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for name in ("train", "predict", "export", "hpo", "study", "analyze", "data", "config", "completion",
                 "generate", "validate", "resimulate", "show", "presets", "precision", "compare"):
        assert re.search(rf"\b{name}\b", script), name
    for option in ("--num-particles", "--max-trials", "--config", "--format", "--version"):
        assert option in script, option
    assert re.search(r"^complete .*-F _shtab_nnlab nnlab$", script, re.M)
    if not shutil.which("bash"):
        return
    # What bash offers after a prefix, as it would on <TAB>.
    (tmp_path / "nnlab.bash").write_text(script)

    def offered(*words: str) -> list[str]:
        line = " ".join(words)
        code = (f"source {shlex.quote(str(tmp_path / 'nnlab.bash'))}; COMP_WORDS=({' '.join(map(shlex.quote, words))});"
                f" COMP_CWORD={len(words) - 1}; COMP_LINE={shlex.quote(line)}; COMP_POINT={len(line)};"
                ' _shtab_nnlab; printf "%s\\n" "${COMPREPLY[@]}"')
        done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert offered("nnlab", "tr") == ["train"]
    assert offered("nnlab", "train", "--num-p") == ["--num-particles"]
    assert offered("nnlab", "config", "show", "--format", "") == ["json", "toml"]
    assert "precision" in offered("nnlab", "study", "")


@pytest.mark.parametrize("shell, marker, option", [("zsh", "#compdef nnlab", "--num-particles"),
                                                   ("tcsh", "complete nnlab", " num-particles ")])
def test_zsh_and_tcsh_completion(shell, marker, option):
    proc = run("nnlab", "completion", shell)
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout and option in proc.stdout


# --- printed lines within 120 columns; the retrain hint -------------------------------------------

# A search space whose floats print with 16 digits unless shortened.
SPACE = {"hidden_layers": [[8], [16]], "learning_rate": {"low": 0.0003, "high": 0.001, "log": True},
         "dropout_rate": {"low": 0.0, "high": 0.25}, "l2_regularization": {"low": 1e-05, "high": 0.0003, "log": True}}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 2-trial search of tiny networks on a CSV, in a directory of its own."""
    root = tmp_path_factory.mktemp("shell-search")
    assert run("nnlab", "data", "generate", "--num-particles", "200", "--out", "p.csv", "--seed", "3",
               cwd=root).returncode == 0
    (root / "space.json").write_text(json.dumps(SPACE))
    proc = run("nnlab", "hpo", "--max-trials", "2", "--epochs", "2", "--batch-size", "32", "--data", "p.csv",
               "--space", "space.json", "--output-dir", "out", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc


def test_search_output_fits_and_floats_are_short(search):
    _, proc = search
    assert_fits(proc.stdout + proc.stderr, "nnlab hpo")
    overrides = proc.stdout[proc.stdout.index("  overrides "):proc.stdout.index("  configuration saved")]
    numbers = re.findall(r"\d+\.\d+(?:e-?\d+)?", overrides)
    assert numbers and all(len(n.split("e")[0].replace(".", "").lstrip("0")) <= 4 for n in numbers), overrides
    assert "learning_rate=" in overrides and "hidden_layers=[" in overrides


def retrain_argv(stdout: str) -> list[str]:
    """The printed retrain command (joined over its `` \\`` continuations), as argv for nnlab.cli.main."""
    text = re.sub(r" \\\n\s+", " ", stdout)
    line = next(line for line in text.splitlines() if line.strip().startswith("nnlab train "))
    argv = shlex.split(line)
    assert argv[:2] == ["nnlab", "train"]
    return argv[1:]


def test_the_retrain_hint_works_from_any_directory(search, tmp_path, monkeypatch, capsys):
    root, proc = search
    argv = retrain_argv(proc.stdout)
    config = Path(argv[argv.index("--config") + 1])
    data = Path(argv[argv.index("--data") + 1])
    assert config.is_absolute() and config == (root / "out" / "analysis" / "best_config.json").resolve()
    assert data.is_absolute() and data == (root / "p.csv").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the repository, not the search's directory
    assert main([*argv, "--epochs", "1", "--quiet", "--output-dir", "o"]) == 0
    out = capsys.readouterr().out
    assert_fits(out, "nnlab train (retrain)")
    run_dir = next((elsewhere / "o" / "runs").iterdir())
    saved = json.loads((run_dir / "training_config.json").read_text())["config"]
    best = json.loads(config.read_text())
    assert saved["hidden_layers"] == best["hidden_layers"] and saved["learning_rate"] == best["learning_rate"]
    assert saved["epochs"] == 1


def test_train_output_fits(tmp_path):
    # An output directory of 66 characters: the run directory (~100) fits a line of its own, not its label's.
    # pytest's tmp_path can be longer than that, so the directory is made directly in the system's temp dir.
    short = Path(tempfile.mkdtemp(prefix="nn"))
    assert len(str(short)) < 60, short
    try:
        _train_output_fits(short, tmp_path)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _train_output_fits(short: Path, tmp_path: Path) -> None:
    out = short / ("o" * (65 - len(str(short))))
    assert len(str(out)) == 66
    proc = run("nnlab", "train", "--num-particles", "200", "--epochs", "2", "--set", "hidden_layers=[8]",
               "--set", "jit_compile=false", "--output-dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = str(next((out / "runs").iterdir()))
    assert f"  artifacts\n    {run_dir}\n" in proc.stdout  # wrapped, the path whole
    assert_fits(proc.stdout + proc.stderr, "nnlab train")
    # The commands that use the run print its long paths within 120 columns too, and so does an error.
    raw, predicted = out / "raw_particles.csv", out / "predicted_particles.csv"
    steps = {"nnlab data generate": ("data", "generate", "--num-particles", "50", "--out", str(raw)),
             "nnlab predict": ("predict", str(raw), "--out", str(predicted), "--output-dir", str(out)),
             "nnlab export": ("export", "--format", "keras", "--out", str(out / "model.keras"),
                              "--output-dir", str(out))}
    for what, argv in steps.items():
        proc = run("nnlab", *argv, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert_fits(proc.stdout, what)
    proc = run("nnlab", "predict", str(raw), "--out", str(predicted), "--output-dir", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and f"'{predicted}' already" in proc.stderr  # exists: refused, the path whole
    assert_fits(proc.stderr, "nnlab predict (refused)")


@pytest.mark.parametrize("argv", [("config", "show"), ("config", "show", "--format", "toml"), ("--help",),
                                  ("hpo", "--help"), ("study", "precision", "--help")])
def test_other_outputs_fit(argv):
    proc = run("nnlab", *argv)
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout + proc.stderr, "nnlab " + " ".join(argv))


# --- TOML configuration files ---------------------------------------------------------------------


def test_config_show_reads_a_toml_file_and_writes_one_that_reads_back(tmp_path):
    (tmp_path / "best.toml").write_text('# a comment\nepochs = 3\nhidden_layers = [16, 8]\nactivation = "relu"\n'
                                        "learning_rate = 2.5e-4\n")
    proc = run("nnlab", "config", "show", "--config", str(tmp_path / "best.toml"))
    assert proc.returncode == 0, proc.stderr
    flat = json.loads(proc.stdout)
    assert flat["epochs"] == 3 and flat["hidden_layers"] == [16, 8] and flat["learning_rate"] == 2.5e-4
    as_toml = run("nnlab", "config", "show", "--config", str(tmp_path / "best.toml"), "--set", "dropout_rate=0.1",
                  "--format", "toml")
    assert as_toml.returncode == 0 and "epochs = 3\n" in as_toml.stdout
    (tmp_path / "all.toml").write_text(as_toml.stdout)
    again = run("nnlab", "config", "show", "--config", str(tmp_path / "all.toml"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {**flat, "dropout_rate": 0.1}  # the TOML output is a --config FILE


def test_a_toml_preset_and_json_config_file_side_by_side(tmp_path):
    cfg = tmp_path / "cfg"
    (cfg / "model_presets").mkdir(parents=True)
    (cfg / "model_presets" / "tiny.toml").write_text("hidden_layers = [8]\nepochs = 2\n")
    (tmp_path / "more.json").write_text('{"epochs": 4}')
    assert run("nnlab", "config", "presets", "--config-dir", str(cfg)).stdout.split() == ["tiny"]
    proc = run("nnlab", "config", "show", "--config-dir", str(cfg), "--preset", "tiny", "--config",
               str(tmp_path / "more.json"))
    assert proc.returncode == 0, proc.stderr
    flat = json.loads(proc.stdout)
    assert flat["hidden_layers"] == [8] and flat["epochs"] == 4  # the file after the preset


def test_train_with_a_toml_config_file(tmp_path):
    (tmp_path / "best.toml").write_text("hidden_layers = [12]\nloss_weighting_strategy = \"fixed\"\n")
    assert main(["train", "--num-particles", "200", "--epochs", "1", "--config", str(tmp_path / "best.toml"),
                 "--set", "jit_compile=false", "--quiet", "--output-dir", str(tmp_path / "o")]) == 0
    run_dir = next((tmp_path / "o" / "runs").iterdir())
    saved = json.loads((run_dir / "training_config.json").read_text())["config"]
    assert saved["hidden_layers"] == [12] and saved["loss_weighting_strategy"] == "fixed"


def test_a_closed_pipe_ends_quietly():
    """``nnlab ... | head``: the reader goes away; no "error: Broken pipe", no traceback, status 141."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "nnlab.cli", "completion", "bash"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=env)
    proc.stdout.close()  # before it writes anything (its start-up takes far longer)
    _, err = proc.communicate(timeout=120)
    assert err == b"" and proc.returncode == 141
