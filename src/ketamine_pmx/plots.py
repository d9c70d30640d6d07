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
