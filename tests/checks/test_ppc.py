"""VPC machinery: design-based time bins, percentiles with BLQ, and that the summary passes
data drawn from the model and fails data that are not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ketamine_pmx.checks import (
    Replicates,
    gof_summary,
    gof_table,
    time_bins,
    vpc_summary,
    vpc_table,
)


def test_time_bins_follow_the_planned_times_and_merge_small_bins():
    rng = np.random.default_rng(0)
    planned = np.array([0.25, 0.67, 1.0, 2.0, 4.0, 8.0, 24.0])
    t = np.repeat(planned, 20) * np.exp(0.04 * rng.standard_normal(140))
    labels = time_bins(t, gap=0.2, min_obs=8)
    assert len(np.unique(labels)) == planned.size
    for b in range(planned.size):  # each bin holds exactly one planned time's records
        assert np.unique(np.repeat(planned, 20)[labels == b]).size == 1
    few = np.concatenate([t, [48.0, 49.0]])  # two lonely late samples join the 24 h bin
    assert len(np.unique(time_bins(few, gap=0.2, min_obs=8))) == planned.size


class FakeData:
    def __init__(self, obs):
        self.obs = obs


def design(n_subj=60, seed=1):
    rng = np.random.default_rng(seed)
    times = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 24.0])
    rows = [
        (i, t * np.exp(0.03 * rng.standard_normal()), "S_KET", 1.0)
        for i in range(1, n_subj + 1)
        for t in times
    ]
    obs = pd.DataFrame(rows, columns=["ID", "TIME", "ANALYTE", "LLOQ"])
    typical = 100.0 * np.exp(-0.2 * obs["TIME"].to_numpy())
    return obs, typical


def draws(typical, n, rng):
    eta = rng.normal(0, 0.3, size=(n, typical.size // 6)).repeat(6, axis=1)
    return typical * np.exp(eta + rng.normal(0, 0.15, size=(n, typical.size)))


def run(shift: float, seed=2):
    rng = np.random.default_rng(seed)
    obs, typical = design()
    y = draws(typical, 1, rng)[0] * np.exp(shift * (obs["TIME"].to_numpy() < 1.5))
    obs = obs.assign(DV=np.where(y < 1.0, 1.0, y), BLQ=(y < 1.0).astype(int))
    sims = draws(typical, 200, rng)
    blq = sims < 1.0
    reps = Replicates(np.where(blq, 0.0, sims), blq, typical, typical)
    strata = pd.Series("all", index=obs["ID"].unique())
    tables = [vpc_table(FakeData(obs), reps, strata, pc, 0.2, 8) for pc in (False, True)]
    return vpc_summary(pd.concat(tables)), obs, reps


def test_vpc_passes_data_from_the_model_and_flags_a_misfit_early_phase():
    good, _, _ = run(shift=0.0)
    assert (good["share_inside"] >= 0.6).all() and good["share_inside"].mean() > 0.85
    bad, _, _ = run(shift=0.8)  # early concentrations 2.2x what the model predicts
    assert bad["share_inside_early"].mean() < 0.5
    assert bad["share_inside"].mean() < good["share_inside"].mean() - 0.2


def test_censored_percentiles_are_equal_below_the_lloq():
    _, obs, reps = run(shift=0.0)
    late = vpc_table(FakeData(obs), reps, pd.Series("all", index=obs["ID"].unique()))
    last = late[late["bin"] == late["bin"].max()]
    # At 24 h, 100 exp(-4.8) = 0.8 ng/mL < LLOQ: the median is censored in data and replicates.
    median = last[last["percentile"] == 50.0].iloc[0]
    assert median["observed"] == 0.0 and median["sim_hi"] == 0.0 and median["inside"]
    assert 0.4 < median["blq_observed"] <= 1.0


def test_npd_of_data_from_the_model_are_standard_normal():
    _, obs, reps = run(shift=0.0)
    gof = gof_table(FakeData(obs), reps, seed=3)
    s = gof_summary(gof).iloc[0]
    assert abs(s["npd_mean"]) < 0.25 and 0.75 < s["npd_sd"] < 1.25


def test_a_small_arm_in_one_bin_has_its_interval_and_time_range():
    """Two patients (a small arm) at six planned times: twelve records, fewer than 2 x min_obs,
    form one bin, which still has the replicates' interval and the first and last sampling
    times the VPC draws its band over (a band at one time point would have no width)."""
    rng = np.random.default_rng(4)
    obs, typical = design(n_subj=2)
    obs = obs.assign(DV=draws(typical, 1, rng)[0], BLQ=0, LLOQ=0.01)
    sims = draws(typical, 100, rng)
    reps = Replicates(sims, np.zeros_like(sims, bool), typical, typical)
    table = vpc_table(FakeData(obs), reps, pd.Series("CRPS_IN", index=[1, 2]), False, 0.2, 8)
    assert table["bin"].nunique() == 1 and (table["n_obs"] == 12).all()
    assert (table["sim_lo"] > 0).all() and (table["sim_lo"] < table["sim_hi"]).all()
    assert np.allclose(table["time_lo"], obs["TIME"].min())
    assert np.allclose(table["time_hi"], obs["TIME"].max())
    assert (table["time_lo"] < table["time_h"]).all() and (table["time_h"] < table["time_hi"]).all()
