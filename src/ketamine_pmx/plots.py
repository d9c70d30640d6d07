"""Figures. Each function takes computed objects and returns a matplotlib Figure; nothing here
computes results or writes files, and nothing else in the package plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .contract import ANALYTES, CONCENTRATION_ANALYTES, EVID_OBSERVATION, SCORE_ANALYTES

# Figures are built as matplotlib.figure.Figure objects, without pyplot: no backend is chosen
# or needed here, so the package works headless and leaves notebook backends alone.


def data_overview(table: pd.DataFrame, max_subjects_per_group: int = 60) -> Figure:
    """Observed concentrations (log scale, BLQ marked) per analyte and endpoint time courses.

    One row of panels per group (ARM, or INDICATION when arms are absent); one column per
    concentration analyte present, plus one for the clinical scores. Individual profiles are
    drawn as thin lines (at most ``max_subjects_per_group`` per group), BLQ values as open
    markers at their LLOQ.
    """
    obs = table[table["EVID"] == EVID_OBSERVATION]
    group_col = "ARM" if table["ARM"].notna().all() else "INDICATION"
    if obs[group_col].isna().all():  # neither arms nor indications (e.g. a reference dataset)
        obs = obs.assign(GROUP="all")
        group_col = "GROUP"
    groups = sorted(obs[group_col].dropna().unique())
    analytes = [a for a in CONCENTRATION_ANALYTES if a in set(obs["ANALYTE"])]
    scores = [a for a in SCORE_ANALYTES if a in set(obs["ANALYTE"])]
    n_cols = len(analytes) + (1 if scores else 0)
    fig = Figure(figsize=(2.6 * max(n_cols, 1), 2.3 * max(len(groups), 1)), layout="constrained")
    axes = fig.subplots(len(groups), max(n_cols, 1), squeeze=False)
    for r, group in enumerate(groups):
        g = obs[obs[group_col] == group]
        ids = g["ID"].drop_duplicates().iloc[:max_subjects_per_group]
        g = g[g["ID"].isin(ids)]
        for c, analyte in enumerate(analytes):
            ax = axes[r, c]
            a = g[g["ANALYTE"] == analyte]
            for _, s in a.groupby("ID"):
                ax.plot(s["TIME"], s["DV"], color="0.6", lw=0.5, alpha=0.6)
            quant = a[a["BLQ"] == 0]
            blq = a[a["BLQ"] == 1]
            ax.scatter(quant["TIME"], quant["DV"], s=6, color="C0", label="observed")
            if len(blq):
                ax.scatter(
                    blq["TIME"],
                    blq["DV"],
                    s=10,
                    facecolors="none",
                    edgecolors="C3",
                    label="BLQ (at LLOQ)",
                )
            if (quant["DV"] > 0).any():
                ax.set_yscale("log")
            _time_axis(ax, a["TIME"])
            if r == 0:
                ax.set_title(ANALYTES[analyte].description, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{group}\nng/mL", fontsize=8)
        if scores:
            ax = axes[r, n_cols - 1]
            for endpoint in scores:
                e = g[g["ANALYTE"] == endpoint]
                for _, s in e.groupby("ID"):
                    ax.plot(s["TIME"] / 24.0, s["DV"], color="C2", lw=0.6, alpha=0.5)
                if len(e):
                    med = e.groupby("TIME")["DV"].median()
                    ax.plot(
                        med.index / 24.0,
                        med.to_numpy(),
                        color="k",
                        lw=1.5,
                        label=f"median {endpoint}",
                    )
            ax.set_xlabel("days", fontsize=8)
            ax.set_ylim(bottom=0)
            if r == 0:
                ax.set_title("clinical score", fontsize=8)
            ax.legend(fontsize=6, loc="upper right")
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    fig.suptitle("Observed data by group (BLQ open red markers)", fontsize=10)
    return fig


def _time_axis(ax, times: pd.Series) -> None:
    t_max = float(times.max()) if len(times) else 1.0
    ax.set_xlim(0, max(t_max * 1.05, 1.0))
    ax.set_xlabel("hours", fontsize=8)
    if t_max > 200:
        ax.set_xticks(np.arange(0, t_max + 1, 48 if t_max < 400 else 96))


def effects_forest(effects: pd.DataFrame, outcome: str = "responder") -> Figure:
    """Forest plot of effects per clinical unit (one row per predictor and scope).

    Odds ratios on a log axis with a line at 1 (no effect) for the responder outcome;
    percentage points with a line at 0 for percent change. Each row's label gives the unit
    and P(effect in the hypothesised direction).
    """
    e = effects[effects["outcome"] == outcome].reset_index(drop=True)
    lo_col = next(c for c in e.columns if c.startswith("per_unit_q") and c != "per_unit_median")
    hi_col = [c for c in e.columns if c.startswith("per_unit_q")][-1]
    binary = outcome == "responder"
    fig = Figure(figsize=(7.5, 0.42 * max(len(e), 1) + 1.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(e))[::-1]
    colours = {"all": "black"}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for k, scope in enumerate(sorted(set(e["scope"]) - {"all"})):
        colours[scope] = palette[k % len(palette)]
    for yi, (_, r) in zip(y, e.iterrows(), strict=True):
        c = colours[r["scope"]]
        ax.plot([r[lo_col], r[hi_col]], [yi, yi], color=c, lw=2)
        ax.plot(r["per_unit_median"], yi, "o", color=c, ms=6 if r["scope"] == "all" else 4)
    labels = [
        f"{r['predictor']} ({r['scope']}) per {r['unit']}  P(dir)={r['p_hypothesised_direction']:.2f}"
        for _, r in e.iterrows()
    ]
    ax.set_yticks(y, labels, fontsize=8)
    if binary:
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", ls="--", lw=1)
        ax.set_xlabel("odds ratio of response (median, 90% interval)")
    else:
        ax.axvline(0.0, color="grey", ls="--", lw=1)
        ax.set_xlabel("change in % change from baseline (median, 90% interval)")
    model = e["model"].iloc[0] if len(e) else ""
    ax.set_title(f"{model}: effects on {outcome.replace('_', ' ')}", fontsize=10)
    return fig


def loo_comparison(table: pd.DataFrame) -> Figure:
    """elpd_loo with its SE per model, and the difference to the best with its dSE."""
    t = table.sort_values("rank")
    fig = Figure(figsize=(7.0, 0.45 * len(t) + 1.3), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(t))[::-1]
    ax.errorbar(t["elpd_loo"], y, xerr=t["se"], fmt="o", color="black", label="elpd_loo ± SE")
    best = t["elpd_loo"].iloc[0]
    diff = t.iloc[1:]
    ax.errorbar(
        best - diff["elpd_diff"], y[1:] + 0.2, xerr=diff["dse"], fmt="^", color="tab:grey",
        label="difference to best ± dSE",
    )  # fmt: skip
    ax.axvline(best, color="grey", ls="--", lw=1)
    flags = [f"  (k>0.7: {n})" if n else "" for n in t["n_k_over_after_refit"]]
    ax.set_yticks(y, [f"{m}{f}" for m, f in zip(t["model"], flags, strict=True)], fontsize=8)
    ax.set_xlabel("expected log pointwise predictive density (PSIS-LOO)")
    ax.set_title(f"{t['outcome'].iloc[0]}: models ranked by elpd_loo", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def exposure_overview(summary: pd.DataFrame, groups: pd.Series, metrics: list[str]) -> Figure:
    """Per-patient posterior median and 90% interval of exposure metrics, by group."""
    fig = Figure(figsize=(3.2 * len(metrics), 3.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    names = sorted(groups.dropna().unique())
    for ax, m in zip(axes, metrics, strict=True):
        s = summary[summary["metric"] == m].set_index("ID")
        for k, g in enumerate(names):
            ids = groups[groups == g].index.intersection(s.index)
            sub = s.loc[ids].sort_values("median")
            x = k + np.linspace(-0.35, 0.35, len(sub)) if len(sub) > 1 else np.full(len(sub), k)
            ax.vlines(x, sub["q05"], sub["q95"], color=f"C{k}", lw=0.6, alpha=0.6)
            ax.plot(x, sub["median"], ".", color=f"C{k}", ms=3)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yscale("log")
        unit = "ng h/mL" if m.startswith("AUC") else "ng/mL"
        ax.set_title(f"{m} ({unit})", fontsize=9)
    return fig
