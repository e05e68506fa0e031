"""``ExperimentAnalysis``: runs the sections of one run's analysis and writes the outputs.

Each section runs when its inputs exist and is otherwise skipped with the
reason; a section that fails unexpectedly is recorded (with a warning) and the
others still run. Inputs shared by several sections (the rebuilt data, the
network's predictions, the run history) are loaded once, on first use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnlab.analysis.artifacts import RunArtifacts, load_hpo_results, load_run, load_run_history, validate_artifacts
from nnlab.analysis.base import SECTIONS, ArtifactError, SectionResult, SectionSkipped
from nnlab.analysis.james_stein import DEFAULT_JS_EPOCHS, DEFAULT_JS_SEEDS, VARIANTS
from nnlab.errors import ConfigError

__all__ = ["ExperimentAnalysis", "DEFAULT_SAMPLE_SIZE"]

DEFAULT_SAMPLE_SIZE = 256


class ExperimentAnalysis:
    """The analysis of one training run.

    Args:
        output_dir: the training output root (``training_output``).
        run: a run id, or ``"latest"``.
        analysis_dir: the root of the analyses (default ``<output_dir>/analysis``). This analysis is
            built in a hidden temporary folder there (:attr:`analysis_dir` while it runs) and
            :meth:`write_outputs` renames it to ``<root>/<run_id>`` (``<run_id>_2``, ``_3``, ... when
            an earlier analysis has that name): nothing of another analysis is ever replaced.
        sample_size: test points for the residual and scatter plots.
        js_seeds: seeds per variant in the James-Stein comparison (6: the fewest with
            which its paired Wilcoxon test can reach p < 0.05).
        js_epochs: epochs per training in the James-Stein comparison.
        js_workers: worker processes training the James-Stein study (default: the CPUs available).
        hpo_results: HPO results CSV (default ``<output_dir>/analysis/hpo_results.csv``; used when it exists).
        seed: seed of the test-point sample, the bootstrap and the baselines.
        progress: called with progress lines (e.g. ``print``); None is silent.

    Raises:
        ArtifactError: no runs, or an unknown run id.
        ConfigError: an invalid option.

    Example:
        >>> analysis = ExperimentAnalysis("training_output", run="latest")  # doctest: +SKIP
        >>> analysis.run_section("dynamics").display()                       # doctest: +SKIP
        >>> analysis.run(skip=["james_stein"]); analysis.write_outputs()     # doctest: +SKIP
    """

    def __init__(self, output_dir: str | os.PathLike = "training_output", *, run: str | None = "latest",
                 analysis_dir: str | os.PathLike | None = None, sample_size: int = DEFAULT_SAMPLE_SIZE,
                 js_seeds: int = DEFAULT_JS_SEEDS, js_epochs: int = DEFAULT_JS_EPOCHS, js_workers: int | None = None,
                 hpo_results: str | os.PathLike | None = None, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        checked = [("sample_size", sample_size, 1), ("js_seeds", js_seeds, 1), ("js_epochs", js_epochs, 2)]
        if js_workers is not None:
            checked.append(("js_workers", js_workers, 1))
        for name, value, low in checked:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        self.output_dir = Path(output_dir)
        self.run_artifacts: RunArtifacts = load_run(self.output_dir, run)
        self.analysis_root = Path(analysis_dir) if analysis_dir is not None else self.output_dir / "analysis"
        try:
            self.analysis_root.mkdir(parents=True, exist_ok=True)
            self.analysis_dir = Path(tempfile.mkdtemp(dir=self.analysis_root, prefix=f".{self.run_id}.partial-"))
        except OSError as exc:
            raise ArtifactError(f"analysis directory '{self.analysis_root}' cannot be created: "
                                f"{exc.strerror or exc}") from None
        self.published = False
        self.hpo_path = Path(hpo_results) if hpo_results is not None else self.output_dir / "analysis" / "hpo_results.csv"
        self.sample_size, self.js_seeds, self.js_epochs = int(sample_size), int(js_seeds), int(js_epochs)
        self.js_workers = int(js_workers) if js_workers is not None else None
        self.seed = int(seed)
        self.progress = progress
        self.results: dict[str, SectionResult] = {}
        self._cache: dict[str, Any] = {}

    @property
    def run_id(self) -> str:
        return self.run_artifacts.run_id

    # -- shared inputs, loaded once ------------------------------------------------
    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = load()
            except SectionSkipped as exc:
                self._cache[key] = exc
        value = self._cache[key]
        if isinstance(value, SectionSkipped):
            raise value
        return value

    def history(self):
        """The run history (:func:`~nnlab.analysis.artifacts.load_run_history`)."""
        def load():
            try:
                return load_run_history(self.output_dir)
            except ArtifactError as exc:
                raise SectionSkipped(str(exc)) from None
        return self._cached("history", load)

    def hpo(self):
        """The HPO results, or None when there are none."""
        def load():
            try:
                return load_hpo_results(self.hpo_path)
            except ArtifactError as exc:
                raise SectionSkipped(str(exc)) from None
        return self._cached("hpo", load)

    def data(self):
        """The run's rebuilt data (:class:`~nnlab.analysis.inputs.RunData`)."""
        from nnlab.analysis.inputs import rebuild_run_data

        return self._cached("data", lambda: rebuild_run_data(self.run_artifacts))

    def network_predictions(self) -> dict[str, Any]:
        """The run's network on its test set: scaled and physical predictions, weights file used."""
        def load():
            from nnlab.analysis.inputs import load_network

            data = self.data()
            X_test, y_test = data.prepared.X_test, data.prepared.y_test
            network, path = load_network(self.run_artifacts, X_test.shape[1], y_test.shape[1])
            scaled = network.predict(X_test)
            return {"scaled": scaled, "physical": data.scalers.inverse_transform_targets(scaled),
                    "actual_physical": data.scalers.inverse_transform_targets(y_test), "weights": path.name}
        return self._cached("predictions", load)

    def table_targets(self) -> list[str] | None:
        """The targets of a run trained on a user's table (its recorded data source); None for the particle task."""
        record = self.run_artifacts.record.get("data")
        physics = self.run_artifacts.test_metrics.get("physics")
        table = (isinstance(record, dict) and record.get("task") == "table") or (
            isinstance(physics, dict) and physics.get("applicable") is False)
        if not table:
            return None
        targets = record.get("targets") if isinstance(record, dict) else None
        if not isinstance(targets, list):
            targets = self.run_artifacts.config.get("data_targets")
        return [str(t) for t in targets] if isinstance(targets, list) else []

    def physics_not_applicable(self) -> str | None:
        """Why the physics relations do not apply to the run (a table run), or None when they do."""
        from nnlab.physics import physics_not_applicable

        targets = self.table_targets()
        if targets is None:
            return None
        physics = self.run_artifacts.test_metrics.get("physics")
        if isinstance(physics, dict) and physics.get("applicable") is False and physics.get("reason"):
            return str(physics["reason"])
        return str(physics_not_applicable(targets)["reason"])

    def _n_train(self) -> int | None:
        from nnlab.data import load_scalers
        from nnlab.errors import DataValidationError

        try:
            return int(load_scalers(self.run_artifacts.run_dir).x_scaler.n_samples_seen_)
        except DataValidationError:
            return None

    # -- sections ----------------------------------------------------------------------
    def _section_artifacts(self) -> SectionResult:
        table = validate_artifacts(self.run_artifacts)
        missing = table.loc[table["required"] & ~table["exists"], "artifact"].tolist()
        notes = ["Required artifacts are needed for the run's own sections; optional ones enable more sections."]
        if self.run_artifacts.problems:
            notes.append("Problems: " + "; ".join(f"{k}: {v}" for k, v in self.run_artifacts.problems.items()))
        return SectionResult("artifacts", "", tables={"artifacts": table}, notes=notes,
                             summary={"required_missing": missing, "problems": dict(self.run_artifacts.problems)})

    def _section_dynamics(self) -> SectionResult:
        from nnlab.analysis.dynamics import training_dynamics

        return training_dynamics(self.run_artifacts.results, self.analysis_dir)

    def _section_learning_rate(self) -> SectionResult:
        from nnlab.analysis.dynamics import learning_rate_analysis

        return learning_rate_analysis(self.history(), self.run_artifacts.results, self.run_id, self.analysis_dir)

    def _sampled(self) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        from nnlab.analysis.residuals import r2_per_target, sample_indices

        pred = self.network_predictions()
        actual, predicted = pred["actual_physical"], pred["physical"]
        idx = sample_indices(len(actual), self.sample_size, seed=self.seed)
        names = list(self.data().scalers.target_names)
        return actual[idx], predicted[idx], names, r2_per_target(actual, predicted)

    def _section_residuals(self) -> SectionResult:
        from nnlab.analysis.residuals import residual_analysis

        actual, predicted, names, _ = self._sampled()
        result = residual_analysis(actual, predicted, names, self.analysis_dir, units=self._units(names))
        result.notes.append(f"Weights: {self.network_predictions()['weights']}.")
        return result

    def _section_predictions(self) -> SectionResult:
        from nnlab.analysis.residuals import prediction_scatter

        actual, predicted, names, full_r2 = self._sampled()
        return prediction_scatter(actual, predicted, names, self.analysis_dir, full_r2=full_r2,
                                  units=self._units(names))

    def _units(self, names: list[str]) -> list[str | None]:
        """Each target's unit: the particle task's SI units, none for a table's columns."""
        from nnlab.analysis.labels import target_unit

        table = self.table_targets() is not None
        return [target_unit(n, table=table) for n in names]

    def _section_baselines(self) -> SectionResult:
        from nnlab.analysis.baselines import baseline_comparison

        data = self.data()
        p = data.prepared
        try:
            network, note = self.network_predictions()["scaled"], None
        except SectionSkipped as exc:
            network, note = None, str(exc)
        result = baseline_comparison(p.X_train, p.y_train, p.X_test, p.y_test, data.scalers.inverse_transform_targets,
                                     list(data.scalers.target_names), self.analysis_dir,
                                     network_predictions=network, network_note=note, seed=self.seed)
        result.notes.extend(data.notes)
        return result

    def _run_particles(self) -> tuple[Any, dict[str, Any] | None]:
        """The particles the run trained on, for the James-Stein study: its ``--data`` CSV when that file
        still has the recorded SHA-256, else the particle DataFrame (with its provenance sidecar)."""
        from nnlab.analysis.inputs import run_config
        from nnlab.data import GENERATOR_NAME, generate_particle_data, load_particle_data, validate_particle_data
        from nnlab.runs import file_digest

        source = self.data().source  # rebuilt and checked against scalers.json: the run's own data
        record = self.run_artifacts.record.get("data")
        recorded = record.get("csv_sha256") if isinstance(record, dict) else None
        if source.get("kind") == "csv":
            path = Path(source["csv_path"])
            if recorded and file_digest(path) == recorded:
                return path, None
            report = validate_particle_data(load_particle_data(path), source=path)
            return report.data, {"source": "nnlab analyze: a copy of the run's data file", "run_id": self.run_id,
                                 "csv_path": str(path), "recorded_csv_sha256": recorded}
        generation = run_config(self.run_artifacts).generation
        n, seed = int(source["num_particles"]), source["seed"]
        return generate_particle_data(n, generation, seed), {
            "source": GENERATOR_NAME, "generation_config": generation.model_dump(mode="json"),
            "num_particles": n, "seed": seed}

    def _section_james_stein(self) -> SectionResult:
        from nnlab.analysis.inputs import run_config
        from nnlab.analysis.james_stein import james_stein_comparison

        if self.table_targets() is not None:  # the variants train on the run's own table, its columns as recorded
            record = self.run_artifacts.record.get("data") or {}
            if not record.get("csv_path"):
                raise SectionSkipped("the run's data record names no table file to train the variants on")
            particles, metadata = record["csv_path"], None
        else:
            particles, metadata = self._run_particles()
        return james_stein_comparison(particles, run_config(self.run_artifacts), self.analysis_dir,
                                      study_root=self.analysis_root, seeds=self.js_seeds, epochs=self.js_epochs, workers=self.js_workers,
                                      data_metadata=metadata, progress=self.progress)

    def _section_recommendations(self) -> SectionResult:
        from nnlab.analysis.recommendations import recommendations_section

        try:
            history = self.history()
        except SectionSkipped:
            history = None
        try:
            hpo = self.hpo()
        except SectionSkipped:
            hpo = None
        r2 = (self.run_artifacts.test_metrics.get("scaled") or {}).get("r2")
        return recommendations_section(self.run_artifacts.results, self.run_artifacts.config, self.analysis_dir,
                                       run_id=self.run_id, history=history, hpo=hpo, current_r2=r2,
                                       n_train=self._n_train())

    def _section_heatmap(self) -> SectionResult:
        from nnlab.analysis.heatmap import hyperparameter_heatmap

        return hyperparameter_heatmap(self.history(), self.hpo(), self.analysis_dir)

    def _section_loss_and_constraints(self) -> SectionResult:
        from nnlab.analysis.dynamics import loss_and_constraint_evolution

        return loss_and_constraint_evolution(self.run_artifacts.results, self.run_artifacts.loss_history,
                                             self.analysis_dir)

    def _section_physics(self) -> SectionResult:
        from nnlab.analysis.physics import physics_consistency

        reason = self.physics_not_applicable()
        if reason is not None:
            raise SectionSkipped(f"not applicable: {reason}")
        arrays: dict[str, Any] = {}
        unavailable = None
        try:
            pred, data = self.network_predictions(), self.data()
        except SectionSkipped as exc:  # the table of recorded metrics needs no network
            unavailable = str(exc)
        else:
            X = data.scalers.x_scaler.inverse_transform(np.asarray(data.prepared.X_test, dtype=np.float64))
            arrays = {"y_pred": pred["physical"], "y_true": pred["actual_physical"], "X": X,
                      "target_names": list(data.scalers.target_names),
                      "feature_names": list(data.scalers.feature_names)}
        return physics_consistency(self.output_dir, self.run_id, self.analysis_dir, config=self.run_artifacts.config,
                                   test_metrics=self.run_artifacts.test_metrics, unavailable=unavailable,
                                   seed=self.seed, **arrays)

    # -- running ------------------------------------------------------------------------
    def run_section(self, name: str) -> SectionResult:
        """Run one section (see :data:`~nnlab.analysis.base.SECTIONS`) and keep its result.

        Raises:
            ConfigError: an unknown section name.
        """
        if name not in SECTIONS:
            raise ConfigError(f"unknown analysis section '{name}'; choose from {', '.join(SECTIONS)}")
        start = time.perf_counter()
        try:
            result = getattr(self, f"_section_{name}")()
        except SectionSkipped as exc:
            result = SectionResult(name, "", status="skipped", reason=str(exc))
        except Exception as exc:  # one broken section must not cost the others (DESIGN: degrade)
            where = traceback.format_tb(exc.__traceback__)[-1].strip() if exc.__traceback__ else ""
            result = SectionResult(name, "", status="failed", reason=f"{type(exc).__name__}: {exc}",
                                   summary={"where": where})
            warnings.warn(f"analysis section {name} failed: {type(exc).__name__}: {exc} (the others go on)",
                          RuntimeWarning, stacklevel=2)
        result.name, result.title = name, SECTIONS[name]
        result.elapsed_s = time.perf_counter() - start
        self.results[name] = result
        return result

    def skip_section(self, name: str, reason: str = "skipped on request (--skip)") -> SectionResult:
        """Record a section as skipped without running it."""
        if name not in SECTIONS:
            raise ConfigError(f"unknown analysis section '{name}'; choose from {', '.join(SECTIONS)}")
        self.results[name] = SectionResult(name, SECTIONS[name], status="skipped", reason=reason)
        return self.results[name]

    def run(self, skip: Iterable[str] = (), *,
            on_section: Callable[[SectionResult], None] | None = None) -> dict[str, SectionResult]:
        """Run every section except ``skip``, in report order; returns the results by name."""
        skip = set(skip)
        unknown = sorted(skip - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown analysis section(s) {unknown}; choose from {', '.join(SECTIONS)}")
        for name in SECTIONS:
            result = self.skip_section(name) if name in skip else self.run_section(name)
            if on_section is not None:
                on_section(result)
        return self.results

    # -- outputs --------------------------------------------------------------------------
    def _prediction_mae(self) -> tuple[float | None, str | None, dict[str, float] | None]:
        pred = self._cache.get("predictions")
        if isinstance(pred, dict):
            mae = np.mean(np.abs(pred["physical"] - pred["actual_physical"]), axis=0)
            names = list(self.data().scalers.target_names)
            return float(np.mean(mae)), f"network ({pred['weights']}) on the whole test set", dict(zip(names, mae.tolist()))
        per_target = self.run_artifacts.test_metrics.get("per_target_physical")
        if isinstance(per_target, dict) and per_target:
            values = {k: float(v["mae"]) for k, v in per_target.items()}
            return float(np.mean(list(values.values()))), "test_metrics.json (recorded at training time)", values
        return None, None, None

    def summary(self) -> dict[str, Any]:
        """The analysis summary (what the JSON file holds)."""
        from nnlab.analysis.dynamics import run_curve_summary

        import nnlab

        try:
            curve = run_curve_summary(self.run_artifacts.results)
        except SectionSkipped:
            curve = {}
        mae, mae_source, mae_per_target = self._prediction_mae()
        js = self.results.get("james_stein")
        if js is not None and js.status == "done":
            js_summary = js.summary
        else:
            js_summary = {**{f"{v}_best_loss": None for v in VARIANTS}, "p_values": None, "effect_sizes": None,
                          "winner": None, "status": js.status if js else "not run",
                          "reason": js.reason if js else None}
        data, table = self._cache.get("data"), self.table_targets()
        return {
            "analysis_timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "nnlab_version": nnlab.__version__,
            "run_id": self.run_id,
            "run_dir": str(self.run_artifacts.run_dir),
            "output_dir": str(self.output_dir),
            "task": "particles" if table is None else "table",
            "targets": table if table is not None else (
                list(self.run_artifacts.test_metrics.get("per_target_physical") or {}) or None),
            "analysis_dir": str(self.analysis_dir),
            "settings": {"sample_size": self.sample_size, "js_seeds": self.js_seeds, "js_epochs": self.js_epochs,
                         "js_workers": self.js_workers,
                         "seed": self.seed, "hpo_results": str(self.hpo_path) if self.hpo_path.is_file() else None},
            "best_validation_loss": curve.get("best_validation_loss"),
            "best_validation_loss_epoch": curve.get("best_validation_loss_epoch"),
            "best_r2_score": curve.get("best_r2_score"),
            "best_r2_epoch": curve.get("best_r2_epoch"),
            "final_r2_score": curve.get("final_r2_score"),
            "total_training_epochs": curve.get("total_training_epochs"),
            "test_r2": (self.run_artifacts.test_metrics.get("scaled") or {}).get("r2"),
            "prediction_mae": mae,
            "prediction_mae_source": mae_source,
            "prediction_mae_per_target": mae_per_target,
            "target_units": ({n: u for n, u in zip(mae_per_target, self._units(list(mae_per_target)))}
                             if mae_per_target else None),
            "data_source": data.source if data is not None and not isinstance(data, Exception) else None,
            "james_stein_comparison": js_summary,
            "baselines": self.results["baselines"].summary if self._done("baselines") else None,
            "recommendations": (self.results["recommendations"].summary.get("rows", [])
                                if self._done("recommendations") else []),
            "hyperparameter_impact": self.results["heatmap"].summary if self._done("heatmap") else None,
            "physics_consistency": self._physics_summary(),
            "skipped_sections": {n: r.reason for n, r in self.results.items() if r.status == "skipped"},
            "failed_sections": {n: r.reason for n, r in self.results.items() if r.status == "failed"},
            "sections": {n: {"status": r.status, "reason": r.reason, "elapsed_s": round(r.elapsed_s, 3),
                             "figures": [p.name for p in r.figures],
                             "summary": (r.summary if n not in ("james_stein", "baselines", "recommendations",
                                                                "physics") else None)}
                         for n, r in self.results.items()},
            "figures": [p.name for r in self.results.values() for p in r.figures],
        }

    def _physics_summary(self) -> dict[str, Any] | None:
        """The physics section's summary; ``{"applicable": False, "reason": ...}`` for a table run."""
        if self._done("physics"):
            return self.results["physics"].summary
        reason = self.physics_not_applicable()
        return {"applicable": False, "reason": reason} if reason is not None else None

    def _done(self, name: str) -> bool:
        return name in self.results and self.results[name].status == "done"

    def write_outputs(self) -> dict[str, Path]:
        """Write the summary JSON and report.html, then publish the folder; returns their paths and ``folder``.

        The analysis is built in a hidden temporary folder and renamed as a whole to
        ``<analysis root>/<run_id>`` (or ``<run_id>_2``, ``_3``, ...: the first name no earlier
        analysis holds), so a reader never sees half an analysis and no other analysis's report or
        figure is replaced. Called again on the same object, it writes into that same folder.
        """
        from nnlab.analysis.report import write_report, write_summary

        final = self.analysis_dir if self.published else self._free_folder()
        summary = self.summary()
        summary["analysis_dir"] = str(final)
        summary_path = write_summary(summary, self.analysis_dir)
        summary["summary_file"] = summary_path.name
        ordered = [self.results[n] for n in SECTIONS if n in self.results]
        report_path = write_report(ordered, summary, self.analysis_dir)
        if not self.published:
            self._publish(final)
        return {"folder": self.analysis_dir, "summary": self.analysis_dir / summary_path.name,
                "report": self.analysis_dir / report_path.name}

    def _free_folder(self, start: int = 1) -> Path:
        for attempt in range(start, 10_000):
            path = self.analysis_root / (self.run_id if attempt == 1 else f"{self.run_id}_{attempt}")
            if not path.exists():
                return path
        raise ArtifactError(f"too many analyses of run {self.run_id} in '{self.analysis_root}'")  # pragma: no cover

    def _publish(self, final: Path) -> None:
        """Rename the temporary folder to ``final`` (the next free name if another analysis just took it)."""
        temp = self.analysis_dir
        for _ in range(100):
            try:
                if final.exists():
                    raise FileExistsError(final)
                os.rename(temp, final)
                break
            except OSError:  # taken meanwhile (a non-empty folder cannot be renamed over)
                final = self._free_folder(int(final.name.rsplit("_", 1)[-1]) + 1 if final.name != self.run_id else 2)
        else:  # pragma: no cover
            raise ArtifactError(f"could not publish the analysis folder {temp} in '{self.analysis_root}'")
        os.chmod(final, 0o755)
        for result in self.results.values():
            result.figures = [final / p.relative_to(temp) if p.is_relative_to(temp) else p for p in result.figures]
        self.analysis_dir, self.published = final, True

    def discard(self) -> None:
        """Remove the unpublished temporary folder (an analysis abandoned before :meth:`write_outputs`)."""
        if not self.published:
            shutil.rmtree(self.analysis_dir, ignore_errors=True)
