"""NUTS for any PyMC model of the project: nutpie (default) or PyMC's own sampler.

One place for the sampler settings of the config's ``sampler`` section, the timing of compile
and sampling, the sample statistics under ArviZ's names whichever sampler ran, and progress
reports to ``sys.stderr`` (the job's log in the workflow) while a fit runs: every
``PROGRESS_SECONDS``, the phase, draws done per chain, divergences so far and the time elapsed.
Reporting reads the sampler's state and never changes its draws.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr

#: Seconds between two progress reports of a running sampler.
PROGRESS_SECONDS = 30.0


@dataclass
class Progress:
    """Progress reports of one sampling run, at most one every ``seconds`` (None: silent)."""

    tune: int
    draws: int
    seconds: float | None = PROGRESS_SECONDS
    start: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)

    def due(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.last >= self.seconds

    def report(self, done: np.ndarray, divergences: int) -> None:
        """``done``: iterations (tuning and draws) finished by each chain; ``divergences``:
        divergent transitions after tuning (as the diagnostics count them)."""
        self.last = time.perf_counter()
        total = self.tune + self.draws
        done = np.minimum(done, total)

        def chain(k: int, d: int) -> str:
            if d >= total:
                return f"chain {k} done"
            if d < self.tune:
                return f"chain {k} tuning {d}/{self.tune}"
            return f"chain {k} sampling {d - self.tune}/{self.draws}"

        elapsed = int(self.last - self.start)
        state = "done" if done.min() >= total else "running"
        print(
            f"NUTS {state}: {int(done.sum())}/{len(done) * total} iterations, "
            f"{divergences} divergent after tuning, {elapsed // 60}m{elapsed % 60:02d}s elapsed; "
            + ", ".join(chain(k, int(d)) for k, d in enumerate(done)),
            file=sys.stderr,
            flush=True,
        )


def _nutpie_state(sampler: Any) -> tuple[np.ndarray, int]:
    """Iterations finished by each chain of a running nutpie sampler, and its divergences."""
    import pyarrow
    import pyarrow.compute as pc

    # the raw trace so far (the public ``inspect`` converts every draw to ArviZ)
    _, stats = sampler._sampler.inspect().get_arrow_trace()
    done = np.array([batch.num_rows for batch in stats])
    after_tuning = [
        pc.and_(pyarrow.array(b.column("diverging")), pc.invert(pyarrow.array(b.column("tuning"))))
        for b in stats
    ]
    return done, sum(int(pc.sum(d).as_py() or 0) for d in after_tuning)


def _nutpie_sample(compiled: Any, progress: Progress, **settings: Any) -> az.InferenceData:
    """``nutpie.sample`` in the background, reporting progress while it runs."""
    import nutpie

    sampler = nutpie.sample(compiled, blocking=False, progress_bar=False, **settings)
    wait = 1.0 if progress.seconds is None else min(1.0, max(progress.seconds, 0.01))
    while True:
        try:
            idata = sampler.wait(timeout=wait)
        except TimeoutError:  # still running
            if progress.due():
                progress.report(*_nutpie_state(sampler))
            continue
        except BaseException:
            sampler.cancel()
            raise
        if progress.seconds is not None:
            n = settings["tune"] + settings["draws"]
            divergent = int(idata.sample_stats["diverging"].sum())
            progress.report(np.full(settings["chains"], n), divergent)
        return idata


class _PymcProgress:
    """A ``pm.sample`` callback: counts each chain's iterations and divergences."""

    def __init__(self, progress: Progress, chains: int):
        self.progress, self.done, self.divergent = progress, np.zeros(chains, int), 0

    def __call__(self, trace: Any, draw: Any) -> None:
        self.done[draw.chain] += 1
        stats = draw.stats[0] if isinstance(draw.stats, list | tuple) else draw.stats
        self.divergent += int(not draw.tuning and bool(stats.get("diverging", False)))
        if self.progress.due() or self.done.min() == self.progress.tune + self.progress.draws:
            self.progress.report(self.done, self.divergent)


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

    def __init__(
        self,
        model: pm.Model,
        sampler: dict[str, Any],
        progress_seconds: float | None = PROGRESS_SECONDS,
    ):
        if sampler["backend"] not in ("nutpie", "pymc"):  # guarded by the config schema
            raise ValueError(f"unknown sampler backend {sampler['backend']!r}")
        self.model, self.sampler = model, sampler
        self.progress_seconds = progress_seconds  # None: no progress reports
        self.compiled = None
        self.compile_seconds = 0.0
        if sampler["backend"] == "nutpie":
            from ketamine_pmx.inference.nutpie_compile import compile_pymc_model

            t0 = time.perf_counter()
            self.compiled = compile_pymc_model(model)  # nutpie's, entry points cached on disk
            self.compile_seconds = round(time.perf_counter() - t0, 3)

    def sample(self, seed: int, data: dict[str, Any] | None = None) -> NutsRun:
        s = self.sampler
        max_depth = s.get("max_depth", 10)  # the schema's default, for hand-made settings
        t0 = time.perf_counter()
        progress = Progress(s["tune"], s["draws"], self.progress_seconds)
        if self.compiled is not None:
            compiled = self.compiled.with_data(**data) if data else self.compiled
            t1 = time.perf_counter()
            idata = _nutpie_sample(
                compiled,
                progress,
                draws=s["draws"],
                tune=s["tune"],
                chains=s["chains"],
                cores=s["cores"],
                seed=seed,
                target_accept=s["target_accept"],
                low_rank_modified_mass_matrix=s["low_rank_mass_matrix"],
                maxdepth=max_depth,
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
                progress.start = progress.last = t1
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
                    callback=_PymcProgress(progress, s["chains"])
                    if progress.seconds is not None
                    else None,
                )
            compile_s = round(t1 - t0, 3)
        t2 = time.perf_counter()
        warmup = idata.get("warmup_sample_stats")  # absent without tuning
        tuning_steps = int(warmup["n_steps"].sum()) if warmup is not None else 0
        idata = az.InferenceData(
            posterior=idata.posterior, sample_stats=standard_sample_stats(idata.sample_stats)
        )
        return NutsRun(idata, compile_s, round(t2 - t1, 3), tuning_steps)


def run_nuts(
    model: pm.Model,
    sampler: dict[str, Any],
    seed: int,
    progress_seconds: float | None = PROGRESS_SECONDS,
) -> NutsRun:
    """Compile and sample ``model`` once with the config's sampler settings."""
    return Nuts(model, sampler, progress_seconds).sample(seed)


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
