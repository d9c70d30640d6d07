"""NUTS for any PyMC model of the project: nutpie (default) or PyMC's own sampler.

One place for the sampler settings of the config's ``sampler`` section, the timing of compile
and sampling, and the sample statistics under ArviZ's names whichever sampler ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import arviz as az
import pymc as pm
import xarray as xr


@dataclass
class NutsRun:
    idata: az.InferenceData
    compile_seconds: float
    sampling_seconds: float
    # leapfrog steps (gradient evaluations) of the tuning iterations, all chains together:
    # with sampling's, where the sampling time goes
    tuning_steps: int


class Nuts:
    """A model compiled once for the configured sampler, sampled as often as wanted.

    ``sample(seed, data)`` replaces the model's data containers (``pm.Data``; same ranks)
    before sampling, so refits on changed data (leave-one-out weights, another simulated
    trial of the same size) reuse the compiled log density: nutpie's compiled model takes new
    data without recompiling, PyMC's sampler recompiles from PyTensor's cache.
    """

    def __init__(self, model: pm.Model, sampler: dict[str, Any]):
        if sampler["backend"] not in ("nutpie", "pymc"):  # guarded by the config schema
            raise ValueError(f"unknown sampler backend {sampler['backend']!r}")
        self.model, self.sampler = model, sampler
        self.compiled = None
        self.compile_seconds = 0.0
        if sampler["backend"] == "nutpie":
            from .nutpie_compile import compile_pymc_model

            t0 = time.perf_counter()
            self.compiled = compile_pymc_model(model)  # nutpie's, entry points cached on disk
            self.compile_seconds = round(time.perf_counter() - t0, 3)

    def sample(self, seed: int, data: dict[str, Any] | None = None) -> NutsRun:
        s = self.sampler
        max_depth = s.get("max_depth", 10)  # the schema's default, for hand-made settings
        t0 = time.perf_counter()
        if self.compiled is not None:
            import nutpie

            compiled = self.compiled.with_data(**data) if data else self.compiled
            t1 = time.perf_counter()
            idata = nutpie.sample(
                compiled,
                draws=s["draws"],
                tune=s["tune"],
                chains=s["chains"],
                cores=s["cores"],
                seed=seed,
                target_accept=s["target_accept"],
                low_rank_modified_mass_matrix=s["low_rank_mass_matrix"],
                maxdepth=max_depth,
                progress_bar=False,
            )
            compile_s = self.compile_seconds
        else:
            with self.model:
                if data:
                    pm.set_data(data)
                # The step method compiles the log density and its gradient: outside the timing.
                # PyMC's early tuning has its own cap (8): a lower max_depth caps it too
                step = pm.NUTS(
                    target_accept=s["target_accept"],
                    max_treedepth=max_depth,
                    early_max_treedepth=min(8, max_depth),
                )
                t1 = time.perf_counter()
                idata = pm.sample(
                    step=step,
                    draws=s["draws"],
                    tune=s["tune"],
                    chains=s["chains"],
                    cores=s["cores"],
                    random_seed=seed,
                    progressbar=False,
                    compute_convergence_checks=False,
                    discard_tuned_samples=False,  # for the tuning's step count
                )
            compile_s = round(t1 - t0, 3)
        t2 = time.perf_counter()
        warmup = idata.get("warmup_sample_stats")  # absent without tuning
        tuning_steps = int(warmup["n_steps"].sum()) if warmup is not None else 0
        idata = az.InferenceData(
            posterior=idata.posterior, sample_stats=standard_sample_stats(idata.sample_stats)
        )
        return NutsRun(idata, compile_s, round(t2 - t1, 3), tuning_steps)


def run_nuts(model: pm.Model, sampler: dict[str, Any], seed: int) -> NutsRun:
    """Compile and sample ``model`` once with the config's sampler settings."""
    return Nuts(model, sampler).sample(seed)


def standard_sample_stats(stats: xr.Dataset) -> xr.Dataset:
    """Sample stats under ArviZ's names whichever sampler produced them."""
    rename = {
        "divergent": "diverging",
        "mean_tree_accept": "acceptance_rate",
        "depth": "tree_depth",
    }
    stats = stats.rename({k: v for k, v in rename.items() if k in stats and v not in stats})
    keep = [
        v
        for v in (
            "diverging",
            "energy",
            "tree_depth",
            "n_steps",
            "step_size",
            "acceptance_rate",
            "lp",
        )
        if v in stats
    ]
    return stats[keep]


__all__ = ["Nuts", "NutsRun", "run_nuts", "standard_sample_stats"]
