"""Figures are built from computed tables and return a Figure (nothing is shown or written)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from conftest import make_config
from matplotlib.figure import Figure

from ketamine_pmx import plots
from ketamine_pmx.data import validate_frame
from ketamine_pmx.plots import data_overview
from ketamine_pmx.simulate import simulate_trial


def test_data_overview_has_a_panel_per_group_and_analyte(tmp_path):
    cfg = make_config(arms={"MDD": 2, "CRPS_OUT": 1, "CRPS_IN": 1})
    trial = simulate_trial(cfg)
    raw = trial.data.astype(str).replace({"nan": ".", "<NA>": "."})
    table = validate_frame(raw, cfg["data"], "sim").table
    fig = data_overview(table)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 7  # 3 arms x (6 analytes + scores)
    assert fig.axes[0].get_yscale() == "log"
    fig.savefig(tmp_path / "x.png")


def test_overview_of_a_dataset_without_arms_or_indications():
    from conftest import REPO

    from ketamine_pmx.config import load_config
    from ketamine_pmx.data import load_dataset
    from ketamine_pmx.plots import data_overview

    config = load_config(REPO / "config" / "theophylline.yaml")
    table = load_dataset(REPO / config["data"]["path"], config["data"]).table
    fig = data_overview(table)
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"


# --------------------------------------------------------------------------------------
# Every figure: a legend, labelled axes with units; VPC bands in every panel
# --------------------------------------------------------------------------------------


def vpc_rows(stratum, analyte, times):
    """A VPC table of one stratum and analyte: bins at ``times``, intervals around 100/t."""
    rows = []
    for b, t in enumerate(times):
        for q, f in ((5.0, 0.5), (50.0, 1.0), (95.0, 2.0)):
            mid = 100.0 / (1 + t) * f
            rows.append(
                {
                    "kind": "vpc", "stratum": stratum, "analyte": analyte, "bin": b,
                    "time_h": t, "time_lo": t * 0.95, "time_hi": t * 1.05, "n_obs": 2,
                    "percentile": q, "observed": mid, "sim_lo": mid * 0.7,
                    "sim_median": mid, "sim_hi": mid * 1.4, "inside": True, "lloq": 0.1,
                }
            )  # fmt: skip
    return rows


def band_widths(ax):
    """Time extent of each filled band (PolyCollection) drawn in a panel."""
    from matplotlib.collections import PolyCollection

    return [
        np.ptp(path.vertices[:, 0])
        for c in ax.collections
        if isinstance(c, PolyCollection)
        for path in c.get_paths()
    ]


def test_vpc_draws_a_band_in_a_panel_of_one_bin():
    """A small arm whose records form a single time bin still shows the replicates' intervals
    (a band over the bin's time range), as the arm with several bins does."""
    table = pd.DataFrame(
        vpc_rows("MDD", "S_KET", [0.5, 1.0, 4.0]) + vpc_rows("CRPS_IN", "S_KET", [24.0])
    )
    fig = plots.vpc(table)
    panels = {ax.get_title(): ax for ax in fig.axes}
    for title in ("MDD: S_KET", "CRPS_IN: S_KET"):
        widths = band_widths(panels[title])
        assert len(widths) == 3 and min(widths) > 0, (title, widths)


def labelled(fig):
    """Axes of a figure that show data, each with an x and a y label or one on its row/column
    (grid figures label the outer panels only)."""
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    by_row, by_col = {}, {}
    for ax in axes:
        spec = ax.get_subplotspec()
        by_row.setdefault(spec.rowspan.start, []).append(ax)
        by_col.setdefault(spec.colspan.start, []).append(ax)
    for ax in axes:
        spec = ax.get_subplotspec()
        assert any(a.get_xlabel() for a in by_col[spec.colspan.start]), ax.get_title()
        assert any(a.get_ylabel() for a in by_row[spec.rowspan.start]), ax.get_title()
    return axes


def has_legend(fig):
    return bool(fig.legends) or any(ax.get_legend() is not None for ax in fig.axes)


def figures():
    rng = np.random.default_rng(0)
    ids = [f"P{i}" for i in range(12)]
    groups = pd.Series(["MDD"] * 6 + ["CRPS"] * 6, index=ids)
    exposure = pd.DataFrame(
        [
            {"ID": i, "metric": m, "median": v, "q05": v / 2, "q95": v * 2}
            for i in ids
            for m, v in (("AUC_HNK", rng.uniform(50, 500)), ("CMAX_KET", rng.uniform(50, 300)))
        ]
    )
    gof_table = pd.DataFrame(
        {
            "ID": np.repeat(ids, 4), "TIME": np.tile([0.5, 1.0, 4.0, 24.0], 12),
            "ANALYTE": np.tile(["S_KET", "S_NK"], 24), "DV": rng.uniform(1, 100, 48),
            "BLQ": 0, "PRED": rng.uniform(1, 100, 48), "IPRED": rng.uniform(1, 100, 48),
            "NPD": rng.standard_normal(48),
        }
    )  # fmt: skip
    etas = pd.DataFrame(
        {
            "ID": ids * 2, "effect": ["cl"] * 12 + ["v"] * 12, "chain": "S",
            "eta_mean": rng.normal(0, 0.2, 24), "WT": np.tile(rng.uniform(50, 100, 12), 2),
            "CYP2B6_CLASS": ["NM", "IM", "PM"] * 8,
        }
    )  # fmt: skip
    groups_table = pd.DataFrame(
        [
            {"outcome": "responder", "grouping": g, "group": lv, "n": 6, "observed": 0.5,
             "predicted_median": 0.45, "predicted_lo": 0.2, "predicted_hi": 0.7, "inside": True}
            for g, levels in (("overall", ["all"]), ("indication", ["MDD", "CRPS"]))
            for lv in levels
        ]
    )  # fmt: skip
    calibration_table = pd.DataFrame(
        {"predicted": [0.2, 0.5, 0.8], "observed": [0.25, 0.5, 0.7],
         "observed_lo": [0.1, 0.3, 0.5], "observed_hi": [0.4, 0.7, 0.85]}
    )  # fmt: skip
    effects = pd.DataFrame(
        [
            {"model": "response_full", "outcome": "responder", "predictor": p, "scope": s,
             "unit": "10 units", "per_unit_median": 1.2, "per_unit_q05": 0.8,
             "per_unit_q95": 1.8, "p_hypothesised_direction": 0.8}
            for p in ("DSER", "MG")
            for s in ("all", "MDD", "CRPS")
        ]
    )  # fmt: skip
    loo = pd.DataFrame(
        {"model": ["a", "b"], "rank": [0, 1], "elpd_loo": [-10.0, -12.0], "se": [2.0, 2.0],
         "elpd_diff": [0.0, 2.0], "dse": [0.0, 1.0], "n_k_over_after_refit": [0, 1],
         "outcome": "responder"}
    )  # fmt: skip
    return {
        "vpc": plots.vpc(pd.DataFrame(vpc_rows("MDD", "S_KET", [0.5, 1.0, 4.0]))),
        "gof": plots.gof(gof_table),
        "eta_covariates": plots.eta_covariates(etas),
        "response_ppc": plots.response_ppc(groups_table),
        "calibration": plots.calibration(calibration_table),
        "loo_pit": plots.loo_pit(rng.uniform(size=50)),
        "exposure_overview": plots.exposure_overview(exposure, groups, ["AUC_HNK", "CMAX_KET"]),
        "effects_forest": plots.effects_forest(effects),
        "loo_comparison": plots.loo_comparison(loo),
    }


def test_every_figure_has_a_legend_and_axes_labelled_with_units():
    for name, fig in figures().items():
        assert has_legend(fig), name
        axes = labelled(fig)
        labels = [a.get_xlabel() for a in axes] + [a.get_ylabel() for a in axes]
        for label in labels:  # concentrations, exposures and times name their unit
            if any(w in label for w in ("concentration", "time", "AUC", "CMAX")):
                assert re.search(r"\((ng/mL|ng h/mL|h|days)\)", label), (name, label)


def test_data_overview_has_a_legend_and_units(tmp_path):
    cfg = make_config(arms={"MDD": 2, "CRPS_OUT": 1, "CRPS_IN": 1})
    raw = simulate_trial(cfg).data.astype(str).replace({"nan": ".", "<NA>": "."})
    fig = data_overview(validate_frame(raw, cfg["data"], "sim").table)
    assert fig.legends, "no legend for the concentration markers"
    for ax in labelled(fig):
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            assert not label or "(" in label, label  # every label names its unit


def test_vpc_and_gof_tables_in_the_users_units_are_labelled_in_them():
    """A fit reported in min and mg/L draws its figures in min and mg/L, not in h and ng/mL."""
    from ketamine_pmx.results import gof_in_user_units, vpc_in_user_units

    units = {"time": "min", "conc": "mg/L"}
    table = pd.DataFrame(vpc_rows("ALL", "DRUG", [0.5, 1.0, 4.0]))
    ax = plots.vpc(vpc_in_user_units(table, units)).axes[0]
    assert ax.get_xlabel() == "time (min)" and ax.get_ylabel() == "concentration (mg/L)"
    drawn = [line for line in ax.lines if len(line.get_xdata()) == 3]  # the observed percentiles
    median = max(drawn, key=lambda line: line.get_linewidth()).get_xydata()
    assert np.allclose(median[:, 0], [30.0, 60.0, 240.0])  # h -> min
    assert np.allclose(median[:, 1], 1e-3 * 100.0 / (1 + np.array([0.5, 1.0, 4.0])))
    gof_table = pd.DataFrame(
        {"ID": 1, "TIME": [0.5, 2.0], "ANALYTE": "DRUG", "DV": [900.0, 500.0], "BLQ": 0,
         "PRED": [800.0, 600.0], "IPRED": [850.0, 550.0], "NPD": [0.1, -0.2]}
    )  # fmt: skip
    axes = plots.gof(gof_in_user_units(gof_table, units)).axes
    assert axes[0].get_xlabel() == "PRED (mg/L)" and axes[2].get_xlabel() == "time (min)"
    # without unit columns: the library's units, as before
    assert plots.vpc(table).axes[0].get_xlabel() == "time (h)"
