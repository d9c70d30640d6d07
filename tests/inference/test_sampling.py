"""ketamine_pmx.sampling: the config's sampler settings reach nutpie and PyMC's NUTS."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

from ketamine_pmx.inference import run_nuts


def ill_conditioned() -> pm.Model:
    """A correlated Gaussian whose long axis needs deep trees after a short warm-up."""
    cov = np.array([[1.0, 0.995], [0.995, 1.0]])
    with pm.Model() as model:
        pm.MvNormal("x", mu=np.zeros(2), cov=cov)
    return model


def sampler(backend: str, **kw) -> dict:
    base = {
        "backend": backend,
        "chains": 2,
        "draws": 60,
        "tune": 20,
        "cores": 1,
        "target_accept": 0.9,
        "low_rank_mass_matrix": False,
    }
    return {**base, **kw}


@pytest.mark.parametrize("backend", ["nutpie", "pymc"])
def test_max_depth_caps_the_trajectories(backend):
    free = run_nuts(ill_conditioned(), sampler(backend), seed=3).idata.sample_stats
    capped = run_nuts(ill_conditioned(), sampler(backend, max_depth=2), seed=3).idata.sample_stats
    assert int(free["tree_depth"].max()) > 2  # the cap below is not vacuous
    assert int(capped["tree_depth"].max()) <= 2
    if "n_steps" in capped:
        assert int(capped["n_steps"].max()) <= 3


@pytest.mark.parametrize("backend", ["nutpie", "pymc"])
def test_tuning_steps_are_counted_apart_from_the_draws(backend):
    """The tuning iterations' leapfrog steps: at least one per iteration and chain, at most a
    full tree each; the draws' steps are not among them."""
    settings = sampler(backend, max_depth=3)
    run = run_nuts(ill_conditioned(), settings, seed=3)
    iterations = settings["chains"] * settings["tune"]
    assert iterations <= run.tuning_steps <= iterations * (2**3 - 1)
    longer = run_nuts(ill_conditioned(), {**settings, "tune": 4 * settings["tune"]}, seed=3)
    assert longer.tuning_steps > 2 * run.tuning_steps
    assert run.idata.sample_stats.sizes["draw"] == settings["draws"]


@pytest.mark.parametrize("backend", ["nutpie", "pymc"])
def test_progress_reaches_stderr_and_leaves_the_draws_alone(backend, capsys):
    """The fit's log reads the phase, iterations per chain, divergences and time while NUTS
    runs; reporting (here every poll) draws the same numbers as a silent run."""
    settings = sampler(backend, draws=400, tune=300)
    silent = run_nuts(ill_conditioned(), settings, seed=4, progress_seconds=None).idata
    assert capsys.readouterr().err.count("NUTS") == 0
    chatty = run_nuts(ill_conditioned(), settings, seed=4, progress_seconds=1e-4).idata
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("NUTS")]
    np.testing.assert_array_equal(silent.posterior["x"].values, chatty.posterior["x"].values)
    assert len(lines) >= 2  # at least one report while running, and the last
    assert lines[-1].startswith("NUTS done: 1400/1400 iterations, ")
    assert lines[-1].endswith("elapsed; chain 0 done, chain 1 done")
    divergent = int(silent.sample_stats["diverging"].sum())
    assert f" {divergent} divergent after tuning, " in lines[-1]
    assert all(line.startswith("NUTS running: ") for line in lines[:-1])
    assert any(" tuning " in line or " sampling " in line for line in lines[:-1])
