"""Figures. Each function takes computed objects and returns a matplotlib Figure; nothing here
computes results or writes files, and nothing else in the package plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ketamine_pmx.contract import ANALYTES, CONCENTRATION_ANALYTES, EVID_OBSERVATION, SCORE_ANALYTES

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
                ax.set_ylabel(f"{group}\nconcentration (ng/mL)", fontsize=8)
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
            ax.set_xlabel("time (days)", fontsize=8)
            ax.set_ylabel("score (points)", fontsize=8)
            ax.set_ylim(bottom=0)
            if r == 0:
                ax.set_title("clinical score", fontsize=8)
            ax.legend(fontsize=6, loc="upper right")
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    if analytes:
        handles = [
            Line2D([], [], color="0.6", lw=0.5, label="one patient"),
            Line2D([], [], ls="", marker="o", ms=3, color="C0", label="quantified"),
            Line2D([], [], ls="", marker="o", ms=4, mfc="none", mec="C3", label="BLQ (at LLOQ)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7)
    fig.suptitle("Observed data by group", fontsize=10)
    return fig


def _time_axis(ax, times: pd.Series) -> None:
    t_max = float(times.max()) if len(times) else 1.0
    ax.set_xlim(0, max(t_max * 1.05, 1.0))
    ax.set_xlabel("time (h)", fontsize=8)
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
    ax.set_ylabel("predictor (scope) per clinical unit", fontsize=8)
    if binary:
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", ls="--", lw=1)
        ax.set_xlabel("odds ratio of response (median, 90% interval)")
    else:
        ax.axvline(0.0, color="grey", ls="--", lw=1)
        ax.set_xlabel("change in % change from baseline (median, 90% interval)")
    model = e["model"].iloc[0] if len(e) else ""
    ax.set_title(f"{model}: effects on {outcome.replace('_', ' ')}", fontsize=10)
    handles = [
        Line2D([], [], color=c, lw=2, marker="o", ms=5, label=f"{s}: median, 90% interval")
        for s, c in colours.items()
        if s in set(e["scope"])
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")
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
    ax.set_ylabel("model (patients with Pareto k > 0.7)", fontsize=8)
    ax.set_xlabel("elpd_loo: expected log predictive density, PSIS-LOO (higher is better)")
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
        ax.set_title(m, fontsize=9)
        ax.set_ylabel(f"{m} ({unit})", fontsize=8)
        ax.set_xlabel("group (one patient per line)", fontsize=8)
    handles = [
        Line2D([], [], color="0.3", ls="", marker=".", ms=6, label="posterior median"),
        Line2D([], [], color="0.3", lw=1, label="90% interval"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def _unit_label(table: pd.DataFrame, column: str, default: str) -> str:
    """The unit named in ``table[column]`` (one unit, or the distinct ones joined), else
    ``default`` (the library's unit)."""
    if column not in table:
        return default
    return " | ".join(dict.fromkeys(table[column].astype(str)))


def vpc(table: pd.DataFrame, observations: pd.DataFrame | None = None) -> Figure:
    """(pc)VPC: one row per stratum, one column per analyte, log concentration axis.

    Shaded bands: the replicates' 90% interval of the 5th/95th (light) and 50th (dark)
    percentiles per time bin; lines: the observed percentiles (dashed 5th/95th, solid median);
    dots: the observations (plain VPC only). A percentile below the LLOQ is drawn at the LLOQ
    (dotted line). Captions in the report say how to read it. A table in the user's units
    (:func:`ketamine_pmx.results.vpc_in_user_units`: ``time``, ``time_unit``, ``conc_unit``) is
    drawn and labelled in them; else h and ng/mL.
    """
    time_unit = _unit_label(table, "time_unit", "h")
    conc_unit = _unit_label(table, "conc_unit", "ng/mL")
    if "time_h" not in table and "time" in table:
        table = table.rename(columns={"time": "time_h"})
    strata = sorted(table["stratum"].unique())
    analytes = list(dict.fromkeys(table["analyte"]))
    fig = Figure(figsize=(2.5 * len(analytes), 2.3 * len(strata)), layout="constrained")
    axes = fig.subplots(len(strata), len(analytes), squeeze=False)
    for r, s in enumerate(strata):
        for c, a in enumerate(analytes):
            ax = axes[r, c]
            t = table[(table["stratum"] == s) & (table["analyte"] == a)]
            if t.empty:
                ax.set_axis_off()
                continue
            lloq = float(t["lloq"].median()) if "lloq" in t else 0.0
            floor = lloq if lloq > 0 else None

            def lift(v, floor=floor):  # a censored percentile (0) is drawn at the LLOQ
                return np.where(np.asarray(v) > 0, v, floor) if floor else v

            if observations is not None:
                o = observations[(observations["stratum"] == s) & (observations["ANALYTE"] == a)]
                ok = o["BLQ"] == 0
                ax.plot(o.loc[ok, "TIME"], o.loc[ok, "DV"], ".", color="0.6", ms=2, zorder=1)
            for q, shade in ((5.0, 0.15), (50.0, 0.3), (95.0, 0.15)):
                p = t[t["percentile"] == q].sort_values("time_h")
                colour = "tab:red" if q == 50.0 else "tab:blue"
                x = p["time_h"].to_numpy(float)
                lo, hi = lift(p["sim_lo"].to_numpy(float)), lift(p["sim_hi"].to_numpy(float))
                if len(p) == 1:  # one bin: a band over its time range, not a line of no width
                    x = _bin_span(p)
                    lo, hi = np.repeat(lo, 2), np.repeat(hi, 2)
                ax.fill_between(x, lo, hi, color=colour, alpha=shade, lw=0)
                ax.plot(p["time_h"], lift(p["observed"]), color="black", lw=1.2 if q == 50 else 0.8,
                        ls="-" if q == 50.0 else "--", marker=".", ms=3)  # fmt: skip
                miss = p[~p["inside"]]
                ax.plot(miss["time_h"], lift(miss["observed"]), "x", color="tab:red", ms=5)
            if floor:
                ax.axhline(floor, color="0.4", ls=":", lw=0.8)
            ax.set_yscale("log")
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=0.0)
            ax.set_title(f"{s}: {a}", fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel(
                    f"concentration ({conc_unit})"
                    if table["kind"].iloc[0] == "vpc"
                    else f"pred.-corrected conc. ({conc_unit})",
                    fontsize=8,
                )
            if r == len(strata) - 1:
                ax.set_xlabel(f"time ({time_unit})", fontsize=8)
    handles = [
        Patch(color="tab:red", alpha=0.3, lw=0, label="simulated median: 90% interval"),
        Patch(color="tab:blue", alpha=0.15, lw=0, label="simulated 5th/95th pct.: 90% interval"),
        Line2D([], [], color="black", lw=1.2, marker=".", ms=3, label="observed median"),
        Line2D([], [], color="black", lw=0.8, ls="--", label="observed 5th/95th percentile"),
        Line2D([], [], color="tab:red", ls="", marker="x", ms=5, label="observed outside"),
        Line2D([], [], color="0.4", lw=0.8, ls=":", label="LLOQ"),
    ]
    if observations is not None:
        handles.append(Line2D([], [], color="0.6", ls="", marker=".", ms=4, label="observations"))
    ncols = min(4, len(analytes))  # as many as fit under the panels
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=7)
    return fig


def _bin_span(p: pd.DataFrame) -> np.ndarray:
    """The time range of a lone bin (its records' first and last times, at least +-10%)."""
    t = float(p["time_h"].iloc[0])
    lo = float(p["time_lo"].iloc[0]) if "time_lo" in p else t
    hi = float(p["time_hi"].iloc[0]) if "time_hi" in p else t
    return np.array([min(lo, t / 1.1), max(hi, t * 1.1)])


def gof(table: pd.DataFrame) -> Figure:
    """Goodness of fit: DV vs PRED and vs IPRED (log-log, identity line), NPD vs time and vs
    PRED (reference lines at 0 and +-1.96), quantifiable records, coloured by analyte. A table
    in the user's units (:func:`ketamine_pmx.results.gof_in_user_units`: ``TIME_UNIT``,
    ``CONC_UNIT``) is labelled in them; else h and ng/mL."""
    time_unit = _unit_label(table, "TIME_UNIT", "h")
    conc_unit = _unit_label(table, "CONC_UNIT", "ng/mL")
    g = table[table["BLQ"] == 0]
    fig = Figure(figsize=(11, 3.0), layout="constrained")
    axes = fig.subplots(1, 4)
    for k, (a, sub) in enumerate(g.groupby("ANALYTE", sort=True)):
        colour = f"C{k}"
        axes[0].plot(sub["PRED"], sub["DV"], ".", ms=2, color=colour, label=a)
        axes[1].plot(sub["IPRED"], sub["DV"], ".", ms=2, color=colour)
        axes[2].plot(sub["TIME"], sub["NPD"], ".", ms=2, color=colour)
        axes[3].plot(sub["PRED"], sub["NPD"], ".", ms=2, color=colour)
    lo = float(np.nanmin(g[["PRED", "IPRED", "DV"]].to_numpy().clip(1e-3)))
    hi = float(np.nanmax(g[["PRED", "IPRED", "DV"]].to_numpy()))
    titles = (
        "observed vs population prediction",
        "observed vs individual prediction",
        "NPD vs time",
        "NPD vs population prediction",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=8)
    for ax, name in ((axes[0], "PRED"), (axes[1], "IPRED")):
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="identity")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{name} ({conc_unit})", fontsize=8)
        ax.set_ylabel(f"observed ({conc_unit})", fontsize=8)
    for ax, name in ((axes[2], f"time ({time_unit})"), (axes[3], f"PRED ({conc_unit})")):
        for level, style in ((0.0, "-"), (1.96, "--"), (-1.96, "--")):
            ax.axhline(level, color="black", lw=0.8, ls=style)
        ax.set_xscale("symlog", linthresh=1.0) if "time" in name else ax.set_xscale("log")
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("NPD (standard normal)", fontsize=8)
    axes[0].legend(fontsize=6, markerscale=3, title="analyte", title_fontsize=6)
    axes[2].legend(
        handles=[
            Line2D([], [], color="black", lw=0.8, label="0"),
            Line2D([], [], color="black", lw=0.8, ls="--", label="±1.96 (95% of N(0,1))"),
        ],
        fontsize=6,
    )
    return fig


def eta_covariates(etas: pd.DataFrame) -> Figure:
    """Posterior-mean subject effects against weight (log axis) and by CYP2B6 class."""
    groups = list(dict.fromkeys(zip(etas["effect"], etas["chain"], strict=True)))
    fig = Figure(figsize=(2.3 * len(groups), 4.2), layout="constrained")
    axes = fig.subplots(2, len(groups), squeeze=False)
    for c, (effect, chain) in enumerate(groups):
        g = etas[(etas["effect"] == effect) & (etas["chain"] == chain)]
        ax = axes[0, c]
        ax.plot(g["WT"], g["eta_mean"], ".", ms=3)
        ax.set_xscale("log")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_title(f"eta_{effect} [{chain}]", fontsize=8)
        ax.set_xlabel("body weight (kg)", fontsize=8)
        classes = [k for k in ("NM", "IM", "PM") if k in set(g["CYP2B6_CLASS"])]
        axes[1, c].boxplot([g.loc[g["CYP2B6_CLASS"] == k, "eta_mean"] for k in classes])
        axes[1, c].set_xticks(range(1, len(classes) + 1), classes, fontsize=8)
        axes[1, c].axhline(0.0, color="black", lw=0.8)
        axes[1, c].set_xlabel("CYP2B6 metaboliser class", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("posterior mean eta (log scale)", fontsize=8)
    axes[0, 0].legend(
        handles=[
            Line2D([], [], color="C0", ls="", marker=".", ms=5, label="one patient"),
            Line2D([], [], color="black", lw=0.8, label="no effect (eta = 0)"),
        ],
        fontsize=6,
    )
    return fig


def response_ppc(groups: pd.DataFrame, outcome: str = "responder") -> Figure:
    """Observed (dots) against posterior predictive (median and 90% interval) responder rate or
    mean percent change, one panel per grouping (overall, indication, biomarker tertiles,
    CYP2B6 class, exposure tertile). A red dot lies outside its interval."""
    g = groups[groups["outcome"] == outcome]
    groupings = list(dict.fromkeys(g["grouping"]))
    fig = Figure(figsize=(2.2 * len(groupings), 3.0), layout="constrained")
    axes = fig.subplots(1, len(groupings), squeeze=False, sharey=True)[0]
    for ax, grouping in zip(axes, groupings, strict=True):
        sub = g[g["grouping"] == grouping].reset_index(drop=True)
        x = np.arange(len(sub))
        ax.vlines(x, sub["predicted_lo"], sub["predicted_hi"], color="tab:blue", lw=6, alpha=0.35)
        ax.plot(x, sub["predicted_median"], "_", color="tab:blue", ms=14)
        colours = np.where(sub["inside"], "black", "tab:red")
        ax.scatter(x, sub["observed"], color=colours, zorder=3, s=18)
        ax.set_xticks(x, [f"{v}\n(n={n})" for v, n in zip(sub["group"], sub["n"], strict=True)],
                      fontsize=7)  # fmt: skip
        ax.set_title(grouping, fontsize=8)
        ax.set_xlabel("group (n patients)", fontsize=7)
        ax.set_xlim(-0.6, len(sub) - 0.4)
    axes[0].set_ylabel(
        "responder rate (fraction)" if outcome == "responder" else "mean change from baseline (%)",
        fontsize=8,
    )
    handles = [
        Patch(color="tab:blue", alpha=0.35, lw=0, label="predicted 90% interval"),
        Line2D([], [], color="tab:blue", ls="", marker="_", ms=12, label="predicted median"),
        Line2D([], [], color="black", ls="", marker="o", ms=4, label="observed"),
        Line2D([], [], color="tab:red", ls="", marker="o", ms=4, label="observed, outside"),
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(4, len(groupings)), fontsize=7
    )
    return fig


def calibration(table: pd.DataFrame) -> Figure:
    """Observed responder rate (90% Jeffreys interval) against mean predicted probability."""
    fig = Figure(figsize=(3.6, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="perfect calibration")
    ax.errorbar(
        table["predicted"], table["observed"],
        yerr=[(table["observed"] - table["observed_lo"]).clip(lower=0),
              (table["observed_hi"] - table["observed"]).clip(lower=0)],
        fmt="o", color="black", capsize=3, label="observed rate, 90% interval",
    )  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(response), bin mean", fontsize=8)
    ax.set_ylabel("observed responder rate", fontsize=8)
    return fig


def loo_pit(pit: np.ndarray) -> Figure:
    """ECDF of LOO-PIT values minus the uniform CDF, with the 95% Kolmogorov-Smirnov band: a
    calibrated model stays inside; an S shape means too wide or too narrow predictions."""
    u = np.sort(np.asarray(pit))
    n = u.size
    grid = np.linspace(0, 1, 201)
    ecdf = np.searchsorted(u, grid, side="right") / n
    band = 1.358 / np.sqrt(n)
    fig = Figure(figsize=(3.8, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(grid, -band, band, color="tab:blue", alpha=0.2, lw=0, label="95% KS band")
    ax.plot(grid, ecdf - grid, color="black", label="LOO-PIT ECDF - uniform CDF")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("LOO-PIT value", fontsize=8)
    ax.set_ylabel("ECDF - uniform CDF", fontsize=8)
    ax.legend(fontsize=7)
    return fig


def dose_recommendation(
    regimens: pd.DataFrame, rec: pd.Series, safety: dict, title: str | None = None
) -> Figure:
    """One patient: P(response) (90% band) and P(safety limit exceeded) against dose or rate.

    One colour per regimen shape (formulation, infusion length, sessions); the x axis is the
    dose per kg of each infusion for weight-based families and the infusion rate for fixed-rate
    ones. Below, P(peak limit exceeded) (solid, triangles) and P(course AUC limit exceeded)
    (dotted, squares) with the tolerated probabilities as horizontal lines; the recommended
    regimen is starred. Legends say what each line and marker is. The layout is fixed rather
    than constrained, which is cheaper: a cohort draws one figure per patient.
    """
    fams = list(dict.fromkeys(regimens["FAMILY"]))
    n = len(fams)
    fig = Figure(figsize=(4.6 * n, 6.0))
    fig.subplots_adjust(
        left=0.13 / n, right=1 - 0.03 / n, top=0.9, bottom=0.09, hspace=0.08, wspace=0.25
    )
    axes = fig.subplots(2, n, squeeze=False, sharex="col")
    peak, cum = safety["peak_ketamine_ng_ml"], safety["cumulative_auc_ng_h_ml"]
    limits = [
        Line2D([], [], color="0.3", lw=1.2, marker="^", ms=4, label=f"P(peak > {peak:g} ng/mL)"),
        Line2D(
            [], [], color="0.3", lw=1.0, ls=":", marker="s", ms=4,
            label=f"P(course AUC > {cum:g} ng·h/mL)",
        ),
        Line2D(
            [], [], color="C3", ls="--", lw=0.8,
            label=f"tolerated P(peak) {safety['peak_tolerated_probability']:g}",
        ),
        Line2D(
            [], [], color="C4", ls="-.", lw=0.8,
            label=f"tolerated P(course AUC) {safety['cumulative_tolerated_probability']:g}",
        ),
    ]  # fmt: skip
    recommended = str(rec.get("RECOMMENDED")).strip().lower() == "true"
    for c, fam in enumerate(fams):
        g = regimens[regimens["FAMILY"] == fam]
        per_kg = g["DOSE_MG_KG"].notna().all()
        xcol = "DOSE_MG_KG" if per_kg else "RATE_MG_H"
        top, bottom = axes[0, c], axes[1, c]
        for key, s in g.groupby(["FORMULATION", "DURATION_H", "SESSIONS"], sort=True):
            s = s.sort_values(xcol)
            form, dur, k = key
            shape = f"{dur * 60:.0f}-min infusion" if per_kg else f"{dur:g} h/day"
            label = f"{form}, {shape}" + (f", {k} sessions" if k > 1 else "")
            (line,) = top.plot(s[xcol], s["P_RESPONSE"], marker="o", ms=3, lw=1.2, label=label)
            colour = line.get_color()
            top.fill_between(
                s[xcol], s["P_RESPONSE_LO"], s["P_RESPONSE_HI"], color=colour, alpha=0.12
            )
            bottom.plot(s[xcol], s["P_PEAK_EXCEEDED"], color=colour, lw=1.2, marker="^", ms=3)
            bottom.plot(
                s[xcol], s["P_CUM_EXCEEDED"], color=colour, lw=1.0, ls=":", marker="s", ms=3
            )
        handles = top.get_legend_handles_labels()[0]
        if recommended and rec.get("FAMILY", fam) == fam:
            chosen = g[g["REGIMEN"] == rec["REGIMEN"]]
            if len(chosen):
                (star,) = top.plot(
                    chosen[xcol].iloc[:1], chosen["P_RESPONSE"].iloc[:1], marker="*", ms=14,
                    color="k", ls="", label="recommended",
                )  # fmt: skip
                handles.append(star)
        bottom.axhline(safety["peak_tolerated_probability"], color="C3", ls="--", lw=0.8)
        bottom.axhline(safety["cumulative_tolerated_probability"], color="C4", ls="-.", lw=0.8)
        top.set_ylim(0, 1)
        bottom.set_ylim(-0.02, 1.02)
        top.set_title(fam, fontsize=9)
        top.set_ylabel("P(response) with 90% band", fontsize=9)
        bottom.set_ylabel("P(safety limit exceeded)", fontsize=9)
        bottom.set_xlabel(
            "dose per infusion (mg/kg)" if per_kg else "infusion rate (mg/h)", fontsize=9
        )
        top.legend(
            handles=handles, fontsize=7, loc="lower right", title="regimen", title_fontsize=7
        )
        bottom.legend(handles=limits, fontsize=7, loc="upper left")
        for ax in (top, bottom):
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.25, lw=0.5)
    if title is None:
        what = rec.get("REGIMEN") if recommended else rec.get("STATUS", "no regimen recommended")
        title = (
            f"Patient {rec['ID']}: {what if isinstance(what, str) else 'no regimen recommended'}"
        )
    fig.suptitle(title, fontsize=10)
    return fig


def dosing_trial(summary: pd.DataFrame) -> Figure:
    """True response rate and true safety-limit exceedance, model-guided vs standard, by arm."""
    arms = list(dict.fromkeys(summary["ARM"]))
    strategies = list(dict.fromkeys(summary["STRATEGY"]))
    fig = Figure(figsize=(8.5, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    width = 0.8 / len(strategies)
    x = np.arange(len(arms))
    panels = [
        ("TRUE_RESPONSE_RATE", "true response rate"),
        ("TRUE_ANY_EXCEEDED", "share exceeding a safety limit (true)"),
        ("MEAN_TOTAL_MG", "mean total dose (mg)"),
    ]
    for ax, (col, label) in zip(axes, panels, strict=True):
        for k, strat in enumerate(strategies):
            s = summary[summary["STRATEGY"] == strat].set_index("ARM").reindex(arms)
            ax.bar(x + (k - (len(strategies) - 1) / 2) * width, s[col], width, label=strat)
        ax.set_xticks(x, arms, fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    return fig


__all__ = [
    "calibration",
    "data_overview",
    "dose_recommendation",
    "dosing_trial",
    "effects_forest",
    "eta_covariates",
    "exposure_overview",
    "gof",
    "loo_comparison",
    "loo_pit",
    "response_ppc",
    "vpc",
]
