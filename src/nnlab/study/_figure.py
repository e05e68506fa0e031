"""The figure of a study: ``precision_study.png`` or ``compare_study.png``.

Precision: test R² against significant bits, one curve per rounding (and policy
or schedule where they vary) with its 95 % bootstrap band, the float32 reference
as a horizontal line and band, and the hardware formats as labelled diamonds.
Float32 training sits near R² 0.99 while a few bits can fall far below 0.9, so
there are two panels: the left one spaces the vertical axis by log(1 − R²) --
0.9, 0.99 and 0.999 equally far apart, labelled in R² -- so every cell is
visible; the right one is a linear zoom on the reference with the tolerance
lines of the findings. Bits are on a log2 axis: the few-bit region, where
everything happens, gets as much room as 12 to 24.

Compare: bars of mean test R² per variant with CI error bars and one dot per
seed (a seed keeps its colour, and a grey line joins it across variants); next
to it the paired difference from the reference per seed with its mean, CI and
Wilcoxon p.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab._plots import new_figure, save_figure
from nnlab.study._curves import TOLERANCES, precision_curves

__all__ = ["plot_compare_study", "plot_precision_study", "plot_study"]

ROUNDING_COLORS = {"truncate": "#d62728", "nearest": "#1f77b4", "stochastic": "#2ca02c", "none": "#7f7f7f"}
LINESTYLES = ("-", "--", ":", "-.")
# R² values labelled on the log(1 - R²) axis.
R2_TICKS = (-9.0, -4.0, -1.0, 0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999)
FLOOR = 1e-5  # 1 - R² is drawn no lower than this (R² = 1 exactly has no logarithm)


def plot_study(kind: str, table: pd.DataFrame, summary: Mapping[str, Any], per_seed: Mapping[tuple, pd.DataFrame],
               path: Path) -> Path:
    """Draw the figure of a ``kind`` study (see the module docstring) and save it to ``path``."""
    if kind == "precision":
        return plot_precision_study(table, summary, path)
    return plot_compare_study(table, summary, per_seed, path)


def _unexplained(r2: Any) -> np.ndarray:
    return np.maximum(1.0 - np.asarray(r2, dtype=np.float64), FLOOR)


def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _bits_axis(ax, bits: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted({int(b) for b in bits})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{x:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(ticks) / 1.15, max(ticks) * 1.15)
    ax.set_xlabel("significant bits (implicit 1 included; log2 axis)")
    ax.grid(True, which="major", alpha=0.3)


def _r2_log_axis(ax, values: np.ndarray) -> None:
    """Vertical axis spaced by log(1 - R²), better R² up, ticks labelled in R²."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_yscale("log")
    low, high = float(values.min()) / 1.6, float(values.max()) * 1.6
    ax.set_ylim(high, low)  # inverted: small 1 - R² (good) at the top
    ticks = [t for t in R2_TICKS if low <= 1.0 - t <= high]
    ax.yaxis.set_major_locator(FixedLocator([1.0 - t for t in ticks]))
    ax.yaxis.set_major_formatter(lambda y, _pos: f"{1.0 - y:.4g}")
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("test R² (axis spaced by log(1 − R²))")


def _styles(curves: Mapping[str, pd.DataFrame], keys: Sequence[str],
            reference: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Colour by rounding; line style by the other keys (solid: the reference's policy and schedule)."""
    others = [k for k in keys if k not in ("rounding", "bits")]
    combos: dict[tuple, int] = {tuple(reference.get(k) for k in others): 0}
    styles = {}
    extra_colors = iter(f"C{i}" for i in range(4, 10))
    colors = dict(ROUNDING_COLORS)
    for label, line in curves.items():
        rounding = line["rounding"].iloc[0] if "rounding" in line.columns else None
        if rounding not in colors:
            colors[rounding] = next(extra_colors, "C9")
        combo = tuple(line[k].iloc[0] for k in others)
        index = combos.setdefault(combo, len(combos))
        styles[label] = {"color": colors[rounding], "linestyle": LINESTYLES[index % len(LINESTYLES)]}
    return styles


def plot_precision_study(table: pd.DataFrame, summary: Mapping[str, Any], path: Path) -> Path:
    """Test R² against significant bits: log(1 − R²) overview and a linear zoom on the reference."""
    keys = list(summary["keys"])
    fig, axes = new_figure(1, 2, size=(16, 7.2))
    full, zoom = axes[0]
    curves = precision_curves(table, keys)
    formats = {fmt: e for fmt, e in (summary.get("formats") or {}).items() if math.isfinite(e["test_r2_mean"])}
    bits_seen = [int(b) for b in table["bits"] if b is not None and math.isfinite(float(b))]
    bits_seen += [e["bits"] for e in formats.values()] + [24]
    _bits_axis(full, bits_seen)
    _bits_axis(zoom, bits_seen)

    everything = np.concatenate([_finite(table[c]) for c in ("test_r2_mean", "test_r2_ci_low", "test_r2_ci_high")]
                                + [_finite([e["test_r2_mean"] for e in formats.values()])])
    if everything.size == 0:
        for ax in (full, zoom):
            ax.text(0.5, 0.5, "no completed run with a finite test R²", ha="center", va="center",
                    transform=ax.transAxes, fontsize=12)
        fig.suptitle("Precision study: no results", fontsize=14)
        return save_figure(fig, path)
    _r2_log_axis(full, _unexplained(everything))
    has_ref = _draw_reference(full, zoom, table)
    _draw_curves(full, zoom, curves, _styles(curves, keys, summary.get("reference") or {}), has_ref=has_ref)
    _draw_formats(full, zoom, formats)
    _precision_titles(fig, full, zoom, table, summary, keys)
    return save_figure(fig, path)


def _draw_reference(full, zoom, table: pd.DataFrame) -> bool:
    """The float32 reference as a line and band on both panels, the zoom around it with the tolerance lines.

    Returns whether there is a reference result (else the zoom says so and stays empty).
    """
    ref = table.iloc[0]
    ref_mean, ref_low, ref_high = (float(ref[c]) for c in ("test_r2_mean", "test_r2_ci_low", "test_r2_ci_high"))
    if not math.isfinite(ref_mean):
        zoom.text(0.5, 0.5, "no reference result: nothing to zoom on", ha="center", va="center",
                  transform=zoom.transAxes, fontsize=11)
        return False
    zoom_low = ref_mean - 2.5 * max(TOLERANCES)
    in_view = _finite(table["test_r2_ci_high"].where(table["test_r2_ci_high"] >= zoom_low))
    zoom_high = min(1.0, max([ref_mean, *(in_view if in_view.size else [ref_mean])]) + 0.6 * min(TOLERANCES))
    zoom.set_ylim(zoom_low, zoom_high)
    label = f"float32 reference ({_count(int(ref['n_seeds']), 'seed')})"
    for ax, transform in ((full, _unexplained), (zoom, np.asarray)):
        ax.axhline(float(transform(ref_mean)), color="black", lw=1.6, label=label)
        if math.isfinite(ref_low):
            ax.axhspan(float(transform(ref_low)), float(transform(ref_high)), color="black", alpha=0.12, lw=0)
    for tol, style in zip(TOLERANCES, (":", "--")):
        zoom.axhline(ref_mean - tol, color="0.35", lw=1.0, linestyle=style)
        zoom.annotate(f"reference − {tol}", (1.0, ref_mean - tol), xycoords=("axes fraction", "data"),
                      xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8,
                      color="0.3")
    return True


def _draw_curves(full, zoom, curves: Mapping[str, pd.DataFrame], styles: Mapping[str, dict[str, Any]], *,
                 has_ref: bool) -> None:
    """Each curve's mean with its CI band on both panels; on the zoom, a marker for cells below it."""
    for index, (label, line) in enumerate(curves.items()):
        style = styles[label]
        x = line["bits"].astype(float).to_numpy()
        mean = line["test_r2_mean"].astype(float).to_numpy()
        low = line["test_r2_ci_low"].astype(float).to_numpy()
        high = line["test_r2_ci_high"].astype(float).to_numpy()
        n = line["n_seeds"].to_numpy()
        legend = f"{label} (n={n.min()}–{n.max()})" if n.min() != n.max() else f"{label} (n={n.min()})"
        for ax, transform in ((full, _unexplained), (zoom, np.asarray)):
            ok = np.isfinite(mean)
            ax.plot(x[ok], transform(mean[ok]), marker="o", ms=4.5, lw=1.8, label=legend, **style)
            band = np.isfinite(low) & np.isfinite(high)
            if band.any():
                ax.fill_between(x[band], transform(low[band]), transform(high[band]), color=style["color"],
                                alpha=0.15, lw=0)
        if has_ref:  # cells below the zoom: a marker on its lower edge says where they went
            below = np.isfinite(mean) & (mean < zoom.get_ylim()[0])
            if below.any():  # an empty unclipped line would still claim the figure's corner in the layout
                nudge = 1.0 + 0.025 * (index % 5 - 2)  # side by side when several curves fall off at one bit count
                zoom.plot(x[below] * nudge, np.full(below.sum(), zoom.get_ylim()[0]), linestyle="none", marker="v",
                          ms=7, color=style["color"], clip_on=False, alpha=0.8)


def _draw_formats(full, zoom, formats: Mapping[str, Mapping[str, Any]]) -> None:
    """The float32 network deployed in each hardware format: a labelled diamond (on the zoom when in view);
    quantized by an integer quantizer (Keras' int8/int4): a labelled square."""
    from nnlab.formats import QUANTIZER_BITS  # imported here: it may load Keras

    first = {}
    for fmt in formats:
        first.setdefault(fmt in QUANTIZER_BITS, fmt)
    for fmt, entry in formats.items():
        quantizer = fmt in QUANTIZER_BITS
        label = ("float32 network quantized (Keras int8/int4)" if quantizer else
                 "float32 network deployed in a format") if first[quantizer] == fmt else None
        for ax, transform in ((full, _unexplained), (zoom, np.asarray)):
            y = float(transform(entry["test_r2_mean"]))
            if ax is zoom and not (zoom.get_ylim()[0] <= y <= zoom.get_ylim()[1]):
                continue
            ax.plot([entry["bits"]], [y], marker="s" if quantizer else "D", ms=8, color="black",
                    mfc="lightskyblue" if quantizer else "gold", linestyle="none", zorder=5, label=label)
            ax.annotate(fmt, (entry["bits"], y), xytext=(6, -3), textcoords="offset points", fontsize=8.5,
                        fontweight="bold", va="top")


def _precision_titles(fig, full, zoom, table: pd.DataFrame, summary: Mapping[str, Any], keys: Sequence[str]) -> None:
    full.set_title("All cells")
    zoom.set_title("Zoom on the reference (▼: a cell below the zoom)")
    zoom.set_ylabel("test R²")
    full.legend(fontsize=8, loc="lower right", framealpha=0.9)
    seeds = summary.get("seeds") or []
    schedule = ""
    if "schedule" in keys and table["schedule"].nunique() == 1:
        schedule = f", constraint schedule {table['schedule'].iloc[0]}"
    fig.suptitle(f"Precision study: test R² vs significant bits ({_count(len(seeds), 'seed')}{schedule})", fontsize=14)
    fig.supxlabel("Curves: mean test R² over seeds, band: 95 % bootstrap CI over seeds. Black line and grey band: "
                  "unconstrained float32 training. Diamonds: that float32-trained network with its weights cast to a "
                  "hardware format\n(not trained in it). Left: every cell, the vertical axis spaced by log(1 − R²) "
                  "so that 0.9, 0.99 and 0.999 are equally far apart. Right: linear zoom with the tolerances of "
                  "the findings.", fontsize=9, color="0.25")


def plot_compare_study(table: pd.DataFrame, summary: Mapping[str, Any], per_seed: Mapping[tuple, pd.DataFrame],
                       path: Path) -> Path:
    """Per-variant bars of mean test R² with seeds as dots, and the paired differences from the reference."""
    from matplotlib import colormaps

    keys = list(summary["keys"])
    cells = [tuple(row) for row in table[keys].itertuples(index=False, name=None)]
    labels = [" / ".join(str(v) for v in cell) for cell in cells]
    fig, axes = new_figure(1, 2, size=(max(12, 2.2 * len(cells) + 6), 6.8),
                           gridspec_kw={"width_ratios": [1.0, max(0.6, (len(cells) - 1) / max(len(cells), 1))]})
    bars, diffs = axes[0]
    seeds = sorted({int(s) for frame in per_seed.values() for s in frame.index})
    cmap = colormaps["tab10" if len(seeds) <= 10 else "viridis"]
    color = {s: cmap(i if len(seeds) <= 10 else i / max(len(seeds) - 1, 1)) for i, s in enumerate(seeds)}
    values = {cell: per_seed[cell]["test_r2"].astype(float) for cell in cells}
    _draw_variant_bars(bars, table, cells, labels, values, color)
    _draw_differences(diffs, table, cells, labels, values, color, alpha=summary["alpha"])
    fig.suptitle(f"Comparison study: {_count(len(cells), 'variant')}, {_count(len(seeds), 'seed')}", fontsize=14)
    fig.supxlabel("Dots: one per seed, the same colour for the same seed in every variant (grey lines join it). "
                  "p: two-sided paired Wilcoxon signed-rank test against the reference; d: paired Cohen's d.",
                  fontsize=9, color="0.25")
    return save_figure(fig, path)


def _draw_variant_bars(bars, table: pd.DataFrame, cells: Sequence[tuple], labels: Sequence[str],
                       values: Mapping[tuple, pd.Series], color: Mapping[int, Any]) -> None:
    """Mean test R² per variant with its CI, one dot per seed joined across variants; the axis zoomed on the data."""
    seeds = list(color)
    x = np.arange(len(cells))
    means = table["test_r2_mean"].astype(float).to_numpy()
    low = table["test_r2_ci_low"].astype(float).to_numpy()
    high = table["test_r2_ci_high"].astype(float).to_numpy()
    err = np.vstack([np.where(np.isfinite(low), means - low, 0.0), np.where(np.isfinite(high), high - means, 0.0)])
    bars.bar(x, np.nan_to_num(means), color=["0.45"] + ["#4c72b0"] * (len(cells) - 1), alpha=0.55, width=0.6)
    bars.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=7, lw=1.5)
    for s in seeds:
        ys = np.array([values[c].get(s, np.nan) for c in cells])
        bars.plot(x, ys, color="0.6", lw=0.7, alpha=0.7, zorder=2)
        bars.scatter(x, ys, color=color[s], s=28, zorder=3, edgecolor="white", linewidth=0.5,
                     label=f"seed {s}" if len(seeds) <= 12 else None)
    shown = np.concatenate([_finite(v) for v in values.values()] + [_finite(low), _finite(high), _finite(means)])
    if shown.size:
        lo, hi = float(shown.min()), float(shown.max())
        pad = max(0.002, 0.15 * (hi - lo))
        bars.set_ylim(lo - pad, min(1.0, hi + pad) if hi < 1.0 else hi + pad)
    else:
        bars.text(0.5, 0.5, "no completed run with a finite test R²", ha="center", va="center",
                  transform=bars.transAxes, fontsize=12)
    bars.set_xticks(x, [f"{lab}\n(reference)" if i == 0 else lab for i, lab in enumerate(labels)],
                    rotation=0 if len(cells) <= 5 else 30, ha="center" if len(cells) <= 5 else "right")
    bars.set_ylabel("test R² (axis zoomed on the data)")
    bars.set_title("Mean test R² per variant (95 % bootstrap CI), one dot per seed")
    if len(seeds) <= 12 and seeds:
        bars.legend(fontsize=7.5, ncol=2, loc="lower left", framealpha=0.85)


def _draw_differences(diffs, table: pd.DataFrame, cells: Sequence[tuple], labels: Sequence[str],
                      values: Mapping[tuple, pd.Series], color: Mapping[int, Any], *, alpha: float) -> None:
    """Per variant, each seed's difference from the reference, with the mean, its CI, Wilcoxon p and Cohen's d."""
    ref_values = values[cells[0]]
    for i, cell in enumerate(cells[1:], start=1):
        common = values[cell].index.intersection(ref_values.index)
        d = (values[cell].loc[common] - ref_values.loc[common]).dropna()
        diffs.scatter(np.full(len(d), i - 1) + _jitter(len(d)), d.to_numpy(), c=[color[int(s)] for s in d.index],
                      s=26, zorder=3, edgecolor="white", linewidth=0.5)
        row = table.iloc[i]
        mean, lo, hi = (float(row[c]) for c in ("diff_vs_ref_mean", "diff_ci_low", "diff_ci_high"))
        if math.isfinite(mean):
            yerr = [[mean - lo], [hi - mean]] if math.isfinite(lo) else None
            diffs.errorbar([i - 1 + 0.22], [mean], yerr=yerr, fmt="s", color="black", capsize=6, ms=6, zorder=4)
            p, cohen = float(row["wilcoxon_p"]), float(row["cohens_d"])
            text = f"p={p:.2g}" if math.isfinite(p) else "p n/a"
            text += f"\nd={cohen:.2f}" if math.isfinite(cohen) else ""
            diffs.annotate(text, (i - 1 + 0.22, hi if math.isfinite(hi) else mean), xytext=(0, 6),
                           textcoords="offset points", ha="center", va="bottom", fontsize=8.5,
                           fontweight="bold" if math.isfinite(p) and p < alpha else "normal")
    diffs.axhline(0.0, color="black", lw=0.9)
    diffs.set_xticks(np.arange(len(cells) - 1), labels[1:], rotation=0 if len(cells) <= 5 else 30,
                     ha="center" if len(cells) <= 5 else "right")
    if len(cells) > 1:
        diffs.set_xlim(-0.6, len(cells) - 1.4)
    diffs.set_ylabel(f"test R² − {labels[0]} (same seed)")
    diffs.set_title("Paired difference from the reference\n"
                    f"(■ mean with 95 % bootstrap CI; bold: p < {alpha})")
    diffs.grid(True, axis="y", alpha=0.3)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _jitter(n: int) -> np.ndarray:
    return np.linspace(-0.12, 0.12, n) if n > 1 else np.zeros(n)
