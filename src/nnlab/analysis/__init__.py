"""Experiment analysis: figures, statistics, recommendations and a report for a training run.

Small modules, re-exported here lazily (importing ``nnlab.analysis`` loads
neither TensorFlow nor matplotlib):

* :mod:`~nnlab.analysis.framework` -- :class:`ExperimentAnalysis`, which runs the sections;
* :mod:`~nnlab.analysis.artifacts` -- finding runs, reading their artifacts, run history, HPO results;
* :mod:`~nnlab.analysis.inputs` -- rebuilding a run's data split and network;
* :mod:`~nnlab.analysis.dynamics`, :mod:`~nnlab.analysis.residuals`, :mod:`~nnlab.analysis.baselines`,
  :mod:`~nnlab.analysis.james_stein`, :mod:`~nnlab.analysis.recommendations`,
  :mod:`~nnlab.analysis.heatmap` -- the sections;
* paired tests, effect sizes, bootstrap CIs, decay fits: from :mod:`nnlab.stats` (a leaf the
  studies use too);
* :mod:`~nnlab.analysis.report` -- the summary JSON and report.html;
* :mod:`~nnlab.analysis.performance` -- :func:`compute_predictions` (a network on raw particles,
  physical units) and :func:`summarize_run_performance` (a run's headline figures);
* :mod:`~nnlab.analysis.cli` -- ``nnlab analyze``.

Example:
    >>> from nnlab.analysis import ExperimentAnalysis
    >>> analysis = ExperimentAnalysis("training_output", run="latest")  # doctest: +SKIP
    >>> analysis.run(skip=["james_stein"])                              # doctest: +SKIP
    >>> analysis.write_outputs()["report"]                              # doctest: +SKIP
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes

_EXPORTS = {
    "ArtifactError": "nnlab.analysis.base",
    "SectionResult": "nnlab.analysis.base",
    "SectionSkipped": "nnlab.analysis.base",
    "SECTIONS": "nnlab.analysis.base",
    "ExperimentAnalysis": "nnlab.analysis.framework",
    "RunArtifacts": "nnlab.analysis.artifacts",
    "list_runs": "nnlab.analysis.artifacts",
    "load_run": "nnlab.analysis.artifacts",
    "load_run_history": "nnlab.analysis.artifacts",
    "load_hpo_results": "nnlab.analysis.artifacts",
    "validate_artifacts": "nnlab.analysis.artifacts",
    "rebuild_run_data": "nnlab.analysis.inputs",
    "load_network": "nnlab.analysis.inputs",
    "paired_wilcoxon": "nnlab.stats",
    "cohens_d_paired": "nnlab.stats",
    "bootstrap_ci": "nnlab.stats",
    "compare_paired": "nnlab.stats",
    "one_sample_ttest": "nnlab.stats",
    "fit_exponential_decay": "nnlab.stats",
    "training_dynamics": "nnlab.analysis.dynamics",
    "learning_rate_analysis": "nnlab.analysis.dynamics",
    "loss_and_constraint_evolution": "nnlab.analysis.dynamics",
    "residual_analysis": "nnlab.analysis.residuals",
    "prediction_scatter": "nnlab.analysis.residuals",
    "baseline_comparison": "nnlab.analysis.baselines",
    "guarded_mape": "nnlab.analysis.baselines",
    "james_stein_comparison": "nnlab.analysis.james_stein",
    "compare_variants": "nnlab.analysis.james_stein",
    "recommend": "nnlab.analysis.recommendations",
    "hyperparameter_heatmap": "nnlab.analysis.heatmap",
    "hyperparameter_table": "nnlab.analysis.heatmap",
    "write_summary": "nnlab.analysis.report",
    "write_report": "nnlab.analysis.report",
    "compute_predictions": "nnlab.analysis.performance",
    "summarize_run_performance": "nnlab.analysis.performance",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
