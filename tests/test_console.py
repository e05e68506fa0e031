"""The console: progress display, --verbose/--quiet, no TensorFlow start-up noise, python -m nnlab."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--config-dir", str(REPO / "ml_config"), "--num-particles", "300", "--epochs", "12",
         "--set", "hidden_layers=[16]", "--set", "jit_compile=false"]
# TensorFlow's C++ start-up lines (pre-absl::InitializeLog, oneDNN, CUDA probing).
TF_NOISE = re.compile(r"cuInit|oneDNN|absl|cuda drivers|cpu_feature_guard|^[IWE]\d{4} \d\d:\d\d:", re.MULTILINE)
STEP_COUNT = re.compile(r"(?<![\d.])(\d+)/(\d+)(?![\d.])")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NNLAB_TF_LOG", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _overshooting_counts(text: str) -> list[str]:
    return [m.group(0) for m in STEP_COUNT.finditer(text) if int(m.group(1)) > int(m.group(2))]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """`python main.py` on small data, stdout and stderr captured (not a terminal)."""
    cwd = tmp_path_factory.mktemp("plain")
    result = _run([str(REPO / "main.py"), *SMALL, "--set", "constraint_interval=5"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_plain_output_is_short_lines_without_tensorflow_noise(plain_run):
    out, err = plain_run.stdout, plain_run.stderr
    lines = (out + err).splitlines()
    assert max(len(line) for line in lines) <= 160, max(lines, key=len)
    assert not TF_NOISE.search(out + err), TF_NOISE.search(out + err).group(0)
    assert not _overshooting_counts(out + err)
    progress = [line for line in out.splitlines() if re.match(r"epoch +\d+/12 ", line)]
    # one line per tenth of the 12 epochs, the last one included
    assert 8 <= len(progress) <= 12, progress
    assert progress[-1].startswith("epoch 12/12")
    assert all("val R²" in line and " lr " in line and "loss" in line for line in progress)
    assert any("constraints applied" in line for line in progress), progress  # epochs 5 and 10
    assert "Epoch 1/12" not in out  # no Keras progress output
    assert "final val R²" in out and "artifacts" in out  # the summary is still printed


def test_verbose_restores_keras_output_with_right_step_counts(tmp_path):
    # batch 32 on 192 rows: 6 steps per epoch, fewer than steps_per_execution (10)
    result = _run([str(REPO / "main.py"), *SMALL, "--epochs", "2", "--batch-size", "32", "--verbose"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 1/2" in result.stdout and "Epoch 2/2" in result.stdout
    assert re.search(r"^6/6 ", result.stdout, re.MULTILINE), result.stdout[:2000]
    assert not _overshooting_counts(result.stdout + result.stderr)
    assert not TF_NOISE.search(result.stdout + result.stderr)
    assert not re.search(r"^epoch +\d+/2 ", result.stdout, re.MULTILINE)  # not nnlab's lines as well


def test_keras_progbar_counts_clamped_in_process():
    """The terminal bar (verbose=1) would print 10/6 with steps_per_execution=10 and 6 steps."""
    import contextlib

    import numpy as np

    from nnlab.model import AdvancedNeuralNetwork

    x = np.random.default_rng(0).normal(size=(192, 4)).astype("float32")
    y = x[:, :2].copy()
    net = AdvancedNeuralNetwork((4,), 2, {"hidden_layers": [8], "jit_compile": False, "steps_per_execution": 10,
                                         "loss_weighting_strategy": "fixed"})
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        net.train_with_custom_constraints(x, y, x[:48], y[:48], epochs=1, batch_size=32, verbose=1)
    text = ANSI.sub("", buffer.getvalue())
    assert "6/6" in text
    assert not _overshooting_counts(text), text


def test_quiet_prints_no_progress(tmp_path):
    result = _run([str(REPO / "main.py"), *SMALL, "--epochs", "2", "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not re.search(r"^epoch +\d+/|^Epoch \d", result.stdout, re.MULTILINE | re.IGNORECASE)
    assert "final val R²" in result.stdout


def _tensorflow_prints_start_up_lines(cwd: Path) -> bool:
    probe = _run(["-c", "import tensorflow as tf; tf.config.list_physical_devices()"], cwd, timeout=120)
    return bool(TF_NOISE.search(probe.stderr))


def test_nnlab_tf_log_shows_tensorflow_lines_again(tmp_path):
    if not _tensorflow_prints_start_up_lines(tmp_path):
        pytest.skip("TensorFlow prints no start-up lines on this machine")
    code = "from nnlab._tflog import quiet_tensorflow_import; quiet_tensorflow_import(); import keras"
    shown = _run(["-c", code], tmp_path, timeout=120, NNLAB_TF_LOG="1")
    quiet = _run(["-c", code + "; import tensorflow as tf; tf.config.list_physical_devices()"], tmp_path,
                 timeout=120)
    assert shown.returncode == 0 and quiet.returncode == 0, shown.stderr + quiet.stderr
    assert TF_NOISE.search(shown.stderr)
    assert not TF_NOISE.search(quiet.stderr), quiet.stderr


def test_python_warnings_stay_visible(tmp_path):
    code = ("from nnlab._tflog import quiet_tensorflow_import; quiet_tensorflow_import()\n"
            "import warnings, tensorflow as tf\n"
            "warnings.warn('after tensorflow: still visible')\n"
            "import sys; print('stderr works', file=sys.stderr)\n")
    result = _run(["-c", code], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "UserWarning: after tensorflow: still visible" in result.stderr
    assert "stderr works" in result.stderr
    assert not TF_NOISE.search(result.stderr), result.stderr


def test_failed_tensorflow_import_reaches_the_user(tmp_path):
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nos.write(2, b'libtensorflow_cc.so.2: cannot open\\n')\n"
                                      "raise ImportError('broken install')\n")
    code = "from nnlab._tflog import quiet_tensorflow_import; quiet_tensorflow_import(); import keras"
    result = _run(["-c", code], tmp_path, timeout=120,
                  PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(REPO / "src")]))
    assert result.returncode != 0
    assert "ImportError: broken install" in result.stderr
    assert "libtensorflow_cc.so.2: cannot open" in result.stderr  # what TensorFlow wrote to fd 2


def test_python_dash_m_nnlab(tmp_path):
    result = _run(["-m", "nnlab", "config", "presets", "--config-dir", str(REPO / "ml_config")], tmp_path,
                  timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fast_debug" in result.stdout.split()
    assert not TF_NOISE.search(result.stderr)


class _Constraints:
    """Stands in for WeightConstraintCallback: applied on epochs 6 and 12."""

    @staticmethod
    def callback():
        import keras

        class Applied(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["constraint/applied"] = 1.0 if (epoch + 1) % 6 == 0 else 0.0

        return Applied()


def _fit_with_progress(progress, epochs: int = 12):
    import keras
    import numpy as np

    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("adam", "mse", metrics=[keras.metrics.R2Score(name="r2_score")])
    model.fit(x, x.sum(axis=1, keepdims=True), validation_data=(x, x.sum(axis=1, keepdims=True)),
              epochs=epochs, verbose=0, callbacks=[_Constraints.callback(), progress])


def test_terminal_display_shows_epoch_r2_lr_and_constraint_mark():
    from rich.console import Console

    from nnlab.console import ConsoleProgress

    buffer = io.StringIO()
    _fit_with_progress(ConsoleProgress(Console(force_terminal=True, file=buffer, width=150)))
    frames = ANSI.sub("", buffer.getvalue()).replace("\r", "\n")
    final = [line for line in frames.splitlines() if "epoch 12/12" in line]
    assert final, frames[-2000:]
    last = final[-1]
    assert "val R² " in last and " lr " in last and "loss " in last and "eta" in last
    assert "◆ constraints applied (2x)" in last  # epoch 12 applied them, the second time
    assert max(len(line) for line in frames.splitlines()) <= 150


def test_lines_when_not_a_terminal():
    from rich.console import Console

    from nnlab.console import ConsoleProgress

    buffer = io.StringIO()
    _fit_with_progress(ConsoleProgress(Console(file=buffer, force_terminal=False)), epochs=20)
    lines = buffer.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{k}/20" for k in range(2, 21, 2)]
    assert "constraints applied 1x (last epoch 6)" in lines[2]  # epochs 5-6
    assert lines[-1].split()[-2] == "took"
    assert all(len(line) <= 160 for line in lines)


def test_hpo_worker_output_has_no_tensorflow_noise(tmp_path):
    result = _run([str(REPO / "hpo_agent.py"), "--max-trials", "1", "--epochs", "2", "--num-particles", "200",
                   "--presets", "fast_debug", "--output-dir", "o", "--config-dir", str(REPO / "ml_config")],
                  tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert not TF_NOISE.search(text), TF_NOISE.search(text).group(0)
    assert not _overshooting_counts(text)
    assert "Epoch 1/" not in text


def test_lines_after_a_resume_and_an_early_stop():
    import keras
    import numpy as np
    from rich.console import Console

    from nnlab.console import ConsoleProgress

    class StopAt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 15:
                self.model.stop_training = True

    buffer = io.StringIO()
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=20, initial_epoch=10, verbose=0,
              callbacks=[StopAt(), ConsoleProgress(Console(file=buffer, force_terminal=False))])
    lines = buffer.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["12/20", "14/20", "15/20"]
    assert "val R² n/a" in lines[0]  # no R² metric compiled
    assert "eta" in lines[0] and "took" in lines[-1]


def test_hpo_on_a_terminal_shows_a_trial_bar_above_which_trials_are_listed(tmp_path):
    import pty

    main, sub = pty.openpty()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "120"}
    env.pop("NNLAB_TF_LOG", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "hpo_agent.py"), "--max-trials", "1", "--epochs", "2",
                             "--num-particles", "200", "--presets", "fast_debug", "--output-dir", "o"],
                            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub)
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "trials 0/1" in screen and "trial   0" in screen
    for noise in ("cuInit", "oneDNN", "absl"):
        assert noise not in screen


def test_quiet_c_logs_drops_the_int8_notice_and_replays_the_rest(capfd, monkeypatch):
    import os as _os

    from nnlab._tflog import quiet_c_logs

    monkeypatch.delenv("NNLAB_TF_LOG", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_c_logs():
        _os.write(2, b"E0000 00:00:1796478862.329463   23844 util.cc:131] oneDNN supports DT_INT8 only on "
                     b"platforms with AVX-512. Falling back to the default Eigen-based implementation if present.\n")
        _os.write(2, b"a real error the user must see\n")
    err = capfd.readouterr().err
    assert "DT_INT8" not in err and "a real error the user must see" in err
