"""Figures are built from computed tables and return a Figure (nothing is shown or written)."""

from __future__ import annotations

from conftest import make_config
from matplotlib.figure import Figure

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
