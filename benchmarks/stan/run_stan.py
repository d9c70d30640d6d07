"""The default population PK model (``models/pk_2cmt_metab.yaml``) in Stan, sampled by pystan.

A benchmark companion of :mod:`ketamine_pmx.inference` (PyMC model sampled by nutpie): the Stan
program ``pk_2cmt_metab.stan`` next to this file has the same priors, parameterisation, exact
closed-form solution and log density (constants included), so the two samplers' times and
effective sample sizes can be compared on the same data. ``tests/test_stan_model.py`` checks
that Stan's log density equals PyMC's at random points.

pystan (3.x, through httpstan) compiles the program on the first :func:`build_model` (minutes;
the compiled model is cached under the program text, so later builds take seconds) and runs the
chains in parallel worker processes: httpstan's process pool has ``os.cpu_count()`` workers,
so ``min(chains, os.cpu_count())`` chains run at once (2 on the 2-core machine of the recorded
runs, i.e. 4 chains run as two waves of two). Each chain is single-threaded.

Usage (from the repository root)::

    python benchmarks/stan/run_stan.py [--config config/smoke.yaml] [--data clean.csv]
        [--spec models/pk_2cmt_metab.yaml] [--chains 4] [--draws 1000] [--tune 1000] [--seed 1]
        [--write-data data.json]

Without ``--data`` the virtual trial of ``--config`` is simulated and validated first. The
spec is sampled non-centred, as the program is written (the same posterior in other free
variables). Prints compile and sampling times, the smallest bulk and tail ESS over the
population parameters, the largest R-hat and the number of divergences, as JSON.
``--write-data`` writes the program's data instead (JSON, as CmdStan reads it) and fits nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd

from ketamine_pmx.checks import population_variables
from ketamine_pmx.contract import CYP2B6_CLASSES, DOSE_TARGETS, MOLAR_MASS_G_MOL
from ketamine_pmx.io import write_json
from ketamine_pmx.models import (
    CYP2B6_EFFECT_CLASSES,
    PKData,
    PKSpec,
    censored_observations,
    prepare_pk_data,
)

#: The Stan program (its text is httpstan's cache key).
STAN_FILE = Path(__file__).with_name("pk_2cmt_metab.stan")
#: Log-normal population parameters, in the order of the program's prior data.
LOG_PARAMETERS = ("cl_f", "cl_o", "vc", "q", "vp", "cl_nk", "cl_hnk")
#: BSV groups (PyMC's order) and the parameters that share each group's subject effect.
BSV_GROUPS = {
    "cl": ("cl_f", "cl_o"),
    "vc": ("vc",),
    "q": ("q",),
    "vp": ("vp",),
    "cl_nk": ("cl_nk",),
    "cl_hnk": ("cl_hnk",),
}
#: Structural parameters the program implements, with their kind.
PARAMETER_KINDS = {
    "cl_f": "clearance",
    "cl_o": "clearance",
    "vc": "volume",
    "q": "clearance",
    "vp": "volume",
    "cl_nk": "clearance",
    "v_nk": "volume",
    "fm_hnk": "fraction",
    "cl_hnk": "clearance",
    "v_hnk": "volume",
}
FIXED = ("v_nk", "v_hnk")
#: Stan's sampler columns -> ArviZ's sample_stats names (as sampling.standard_sample_stats).
SAMPLE_STATS = {
    "divergent__": "diverging",
    "energy__": "energy",
    "treedepth__": "tree_depth",
    "n_leapfrog__": "n_steps",
    "stepsize__": "step_size",
    "accept_stat__": "acceptance_rate",
    "lp__": "lp",
}


def stan_program() -> str:
    return STAN_FILE.read_text(encoding="utf-8")


def check_spec(spec: PKSpec) -> None:
    """Refuse a spec that is not the structure the Stan program implements (priors may vary)."""
    s = spec.spec
    problems = []
    want = {
        "parent_compartments": 2,
        "stereo": "enantiomers",
        "metabolites": ["NK", "HNK"],
        "absorption": "none",
    }
    for key, value in want.items():
        if spec.structure.get(key) != value:
            problems.append(f"structure.{key} must be {value!r}")
    if set(spec.parameters) != set(PARAMETER_KINDS):
        problems.append(f"parameters must be {sorted(PARAMETER_KINDS)}")
    else:
        group_of = {p: g for g, members in BSV_GROUPS.items() for p in members}
        for name, par in spec.parameters.items():
            if spec.kind(name) != PARAMETER_KINDS[name]:
                problems.append(f"parameters.{name}.kind must be {PARAMETER_KINDS[name]}")
            if bool(par["fixed"]) != (name in FIXED):
                problems.append(f"parameters.{name}.fixed must be {name in FIXED}")
            group = (par.get("bsv_group") or name) if par["bsv"] else None
            if group != group_of.get(name):
                problems.append(f"parameters.{name}: BSV group must be {group_of.get(name)}")
    cov = s["covariates"]
    if cov.get("allometry", {}).get("estimate", False):
        problems.append("covariates.allometry.estimate must be false")
    if (cov.get("cyp2b6") or {}).get("parameter") != "cl_f":
        problems.append("covariates.cyp2b6 must act on cl_f")
    bsv = s["bsv"]
    if bsv["parameterisation"] != "noncentred" or bsv["correlation"] != "none":
        problems.append("bsv must be non-centred and uncorrelated")
    if s["residual"]["model"] != "log_proportional":
        problems.append("residual.model must be log_proportional")
    if problems:
        raise ValueError(
            f"{spec.name}: the Stan program implements pk_2cmt_metab only:\n  - "
            + "\n  - ".join(problems)
        )


def _terms(data: PKData, spec: PKSpec) -> tuple[dict[str, Any], pd.DataFrame]:
    """(observation, dose) pairs per chain as pk.build_layout forms them (t_obs > t_dose), and
    the observations' subject, chain and level (0-based)."""
    chains = list(spec.chains)
    index = {sid: k for k, sid in enumerate(data.subjects)}
    chain_level = [spec.level_of(a) for a in data.obs["ANALYTE"]]
    obs = pd.DataFrame(
        {
            "obs": np.arange(len(data.obs)),
            "subject": data.obs["ID"].map(index).to_numpy(np.int64),
            "chain": [chains.index(c) for c, _ in chain_level],
            "level": [lv for _, lv in chain_level],
            "t_obs": data.obs["TIME"].to_numpy(float),
        }
    )
    per_chain = []
    doses = data.doses.reset_index(drop=True)
    for c, chain in enumerate(chains):
        frac = doses["ANALYTE"].map(lambda t, ch=chain: DOSE_TARGETS[t].get(ch, 0.0))
        frac = frac.to_numpy(float)
        per_chain.append(
            pd.DataFrame(
                {
                    "dose": np.arange(len(doses)) * len(chains) + c,
                    "subject": doses["ID"].map(index).to_numpy(np.int64),
                    "chain": c,
                    "t_dose": doses["TIME"].to_numpy(float),
                    "amt": doses["AMT"].to_numpy(float) * frac,
                    "rate": doses["RATE"].to_numpy(float) * frac,
                }
            )[frac > 0]
        )
    dose = pd.concat(per_chain, ignore_index=True)
    pairs = obs.merge(dose, on=["subject", "chain"])
    pairs["dt"] = pairs["t_obs"] - pairs["t_dose"]
    pairs = pairs[pairs["dt"] > 0].sort_values(["obs", "dose"], kind="stable")
    infusion = pairs["rate"].to_numpy() > 0
    duration = np.where(
        infusion, pairs["amt"].to_numpy() / np.where(infusion, pairs["rate"].to_numpy(), 1.0), 0.0
    )
    dt = pairs["dt"].to_numpy()
    post = infusion & (dt > duration)
    direct = pairs[~post]
    ended = pairs[post]
    end_ids, post_end = np.unique(ended["dose"].to_numpy(), return_inverse=True)
    first = ended.groupby("dose").agg(
        subject=("subject", "first"), chain=("chain", "first"), top=("level", "max")
    )
    first = first.loc[end_ids]
    end_dur = (ended.groupby("dose")["amt"].first() / ended.groupby("dose")["rate"].first()).loc[
        end_ids
    ]
    dir_infusing = direct["rate"].to_numpy() > 0
    return {
        "n_dir": len(direct),
        "dir_obs": direct["obs"].to_numpy(np.int64) + 1,
        "dir_dt": direct["dt"].to_numpy(float),
        "dir_scale": np.where(dir_infusing, direct["rate"], direct["amt"]).astype(float),
        "dir_infusing": dir_infusing.astype(np.int64),
        "n_end": len(end_ids),
        "end_subject": first["subject"].to_numpy(np.int64) + 1,
        "end_chain": first["chain"].to_numpy(np.int64) + 1,
        "end_dur": end_dur.to_numpy(float),
        "end_top": first["top"].to_numpy(np.int64),
        "n_post": len(ended),
        "post_obs": ended["obs"].to_numpy(np.int64) + 1,
        "post_end": post_end.astype(np.int64) + 1,
        "post_tau": dt[post] - duration[post],
        "post_rate": ended["rate"].to_numpy(float),
    }, obs


def stan_data(data: PKData, spec: PKSpec) -> dict[str, Any]:
    """The Stan program's data from :func:`ketamine_pmx.inference.prepare_pk_data` output."""
    check_spec(spec)
    chains = list(spec.chains)
    cov = spec.spec["covariates"]
    allo = cov.get("allometry", {})
    terms, obs = _terms(data, spec)
    value, lower = censored_observations(spec, data)
    censored = np.isfinite(lower)  # PyMC's Censored: value == lower -> log CDF
    a_idx = data.obs["ANALYTE"].map({a: k for k, a in enumerate(data.analytes)}).to_numpy()
    par = spec.parameters

    def typical(name: str) -> np.ndarray:
        return np.array([spec.typical(name, c) for c in chains])

    fm = typical("fm_hnk")
    if allo.get("enabled", True):
        log_wt = np.log(np.asarray(data.wt, float) / allo.get("reference_weight_kg", 70.0))
    else:  # no weight scaling (as build_pk_model)
        log_wt = np.zeros(len(data.subjects))
    out: dict[str, Any] = {
        "N": len(data.subjects),
        "A": len(data.analytes),
        "log_wt": log_wt,
        "cyp": np.array([CYP2B6_CLASSES.index(c) + 1 for c in data.cyp_class], np.int64),
        "a_cl": float(allo.get("clearance_exponent", 0.75)),
        "a_v": float(allo.get("volume_exponent", 1.0)),
        "r_nk": MOLAR_MASS_G_MOL["NK"] / MOLAR_MASS_G_MOL["KET"],
        "r_hnk": MOLAR_MASS_G_MOL["HNK"] / MOLAR_MASS_G_MOL["NK"],
        **{f"mu_log_{n}": np.log(typical(n)) for n in LOG_PARAMETERS},
        "mu_logit_fm_hnk": np.log(fm / (1.0 - fm)),
        "prior_sd": np.array([par[n]["prior_sd"] for n in (*LOG_PARAMETERS, "fm_hnk")], float),
        "v_nk_typical": typical("v_nk"),
        "v_hnk_typical": typical("v_hnk"),
        "omega_prior_sd": float(spec.spec["bsv"]["omega_prior_sd"]),
        "cyp_prior_sd": float(cov["cyp2b6"]["prior_sd"]),
        "sigma_prior_sd": float(spec.spec["residual"]["sigma_prop_prior_sd"]),
        "n_obs": len(data.obs),
        "obs_subject": obs["subject"].to_numpy(np.int64) + 1,
        "obs_chain": obs["chain"].to_numpy(np.int64) + 1,
        "obs_level": obs["level"].to_numpy(np.int64),
        "obs_analyte": a_idx.astype(np.int64) + 1,
        "y": np.asarray(value, float),
        "n_unc": int((~censored).sum()),
        "unc": np.flatnonzero(~censored) + 1,
        "n_cens": int(censored.sum()),
        "cens": np.flatnonzero(censored) + 1,
        **terms,
    }
    # Plain lists and ints: what pystan's JSON encoder and the Stan data block expect.
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}


def initial_values(sdata: dict[str, Any], chains: int, seed: int) -> list[dict[str, Any]]:
    """Per-chain initial values as PyMC/nutpie start: the PyMC model's initial point (prior
    medians; omega and sigma_prop at their half-normal scale; z and e_cyp2b6 at 0) jittered
    by Uniform(-1, 1) on the unconstrained scale (Stan's own default, Uniform(-2, 2) around 0,
    starts log clearances near log 1 L/h, far out in the tails of the priors)."""
    n, n_analyte = sdata["N"], sdata["A"]
    centre = {
        "e_cyp2b6": np.zeros(2),
        **{f"omega_{g}": np.full(2, np.log(sdata["omega_prior_sd"])) for g in BSV_GROUPS},
        **{f"z_{g}": np.zeros((n, 2)) for g in BSV_GROUPS},
        **{f"log_{p}_pop": np.asarray(sdata[f"mu_log_{p}"]) for p in LOG_PARAMETERS},
        "logit_fm_hnk_pop": np.asarray(sdata["mu_logit_fm_hnk"]),
        "sigma_prop": np.full(n_analyte, np.log(sdata["sigma_prior_sd"])),
    }
    positive = {"sigma_prop", *(f"omega_{g}" for g in BSV_GROUPS)}
    inits = []
    for rng in (np.random.default_rng([seed, c]) for c in range(chains)):
        init = {}
        for name, value in centre.items():
            jittered = value + rng.uniform(-1.0, 1.0, np.shape(value))
            init[name] = (np.exp(jittered) if name in positive else jittered).tolist()
        inits.append(init)
    return inits


def build_model(sdata: dict[str, Any], seed: int = 1) -> tuple[Any, float, bool]:
    """Compile (or fetch from httpstan's cache) the program for ``sdata``.

    Returns the pystan model, the seconds it took and whether the compiled model was cached.
    """
    import httpstan.cache
    import httpstan.models

    program = stan_program()
    name = httpstan.models.calculate_model_name(program)
    cached = name in httpstan.cache.list_model_names()
    t0 = time.perf_counter()
    model = build_program(program, sdata, seed)
    return model, time.perf_counter() - t0, cached


def build_program(
    program: str, data: dict[str, Any], seed: int | None = None, attempts: int = 3
) -> Any:
    """``stan.build``, retried when httpstan's stanc call times out.

    httpstan runs stanc (with pedantic warnings) under a hard 1-second timeout; on a busy
    machine it can run past it, and pystan then fails with a JSON parse error ("TAPE_ERROR")
    instead of the timeout. Other errors (e.g. a syntax error) are raised at once.
    """
    import stan

    for attempt in range(attempts):
        try:
            return stan.build(program, data=data, random_seed=seed)
        except ValueError as exc:
            if "TAPE_ERROR" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(5.0 * (attempt + 1))
    raise AssertionError("unreachable")


def _draws(fit: Any, name: str, chains: int, draws: int, skip: int = 0) -> np.ndarray:
    """(chain, draw, *dims) from pystan's (*dims, saved * chains) (chain index fastest),
    without the first ``skip`` saved draws of each chain (the warm-up, when saved)."""
    arr = np.asarray(fit[name])
    dims = () if name.endswith("__") else arr.shape[:-1]  # sampler columns come as (1, n)
    arr = arr.reshape(*dims, skip + draws, chains)
    return np.moveaxis(arr, (-1, -2), (0, 1))[:, skip:]


def chain_seconds(fit: Any) -> list[float]:
    """Each chain's own warm-up + sampling time as Stan reports it (no process start-up, no
    transfer or parsing of the draws)."""
    pattern = re.compile(rb"([0-9.eE+-]+) seconds \(Total\)")
    out = []
    for output in fit.stan_outputs:
        found = pattern.findall(output)
        out.append(float(found[-1]) if found else float("nan"))
    return out


def to_inference_data(
    fit: Any, data: PKData, spec: PKSpec, chains: int, draws: int, seed: int, skip: int = 0
) -> az.InferenceData:
    """ArviZ InferenceData as :func:`ketamine_pmx.inference.sample_pk` stores it: PyMC's
    variable names and dims, eta_* = omega * z instead of the innovations z_*, sample stats
    under ArviZ's names, and the observed values (group ``observed_data``)."""
    posterior = {name: _draws(fit, name, chains, draws, skip) for name in fit.param_names}
    for group in BSV_GROUPS:
        z = posterior.pop(f"z_{group}")
        posterior[f"eta_{group}"] = posterior[f"omega_{group}"][:, :, None, :] * z
    dims = {"e_cyp2b6": ["cyp2b6_class"], "sigma_prop": ["analyte"]}
    for name in posterior:
        if name.startswith("eta_"):
            dims[name] = ["subject", "enantiomer"]
        elif name.startswith(("omega_", "log_", "logit_")):
            dims[name] = ["enantiomer"]
    stats = {
        new: _draws(fit, old, chains, draws, skip)
        for old, new in SAMPLE_STATS.items()
        if old in fit.sample_and_sampler_param_names
    }
    stats["diverging"] = stats["diverging"].astype(bool)
    stats["tree_depth"] = stats["tree_depth"].astype(np.int64)
    stats["n_steps"] = stats["n_steps"].astype(np.int64)
    value, _ = censored_observations(spec, data)
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        observed_data={"y": value},
        coords={
            "subject": data.subjects,
            "enantiomer": list(spec.chains),
            "analyte": list(data.analytes),
            "cyp2b6_class": list(CYP2B6_EFFECT_CLASSES),
            "obs": np.arange(len(value)),
        },
        dims={**dims, "y": ["obs"]},
    )
    idata.posterior.attrs.update(
        {
            "model": spec.name,
            "spec_sha256": spec.sha256,
            "data_sha256": data.data_sha256,
            "sampler": "pystan",
            "seed": int(seed),
        }
    )
    return idata


def fit_stan(
    table: pd.DataFrame,
    spec: PKSpec,
    *,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int = 1,
    target_accept: float = 0.9,
    max_depth: int = 10,
) -> dict[str, Any]:
    """Build and sample the Stan model of ``spec`` on a clean table; times and diagnostics.

    ``compile_s`` is the build time (compilation, or a cache lookup when ``compiled_cached``),
    ``sampling_s`` the wall time of warm-up plus sampling of all chains, as pystan delivers
    them (it includes starting the worker processes and parsing the draws); chains run in
    parallel on ``cores`` processes (``min(chains, os.cpu_count())``, see the module
    docstring). ``chain_seconds`` are the chains' own times as Stan reports them;
    ``gradient_evaluations`` counts the leapfrog steps of warm-up and sampling, and
    ``ms_per_gradient`` is the chains' total time over that count. ESS and R-hat are over the
    same population variables as :func:`ketamine_pmx.inference.population_variables`.
    """
    data = prepare_pk_data(table, spec)
    sdata = stan_data(data, spec)
    model, compile_s, cached = build_model(sdata, seed)
    t0 = time.perf_counter()
    fit = model.sample(
        num_chains=chains,
        num_samples=draws,
        num_warmup=tune,
        delta=target_accept,
        max_depth=max_depth,
        init=initial_values(sdata, chains, seed),
        save_warmup=True,  # to count every gradient evaluation
    )
    sampling_s = time.perf_counter() - t0
    idata = to_inference_data(fit, data, spec, chains, draws, seed, skip=tune)
    gradients = int(np.asarray(fit["n_leapfrog__"]).sum())
    per_chain = chain_seconds(fit)
    idata.posterior.attrs.update(
        {"compile_seconds": round(compile_s, 3), "sampling_seconds": round(sampling_s, 3)}
    )
    names = population_variables(idata)
    ess_bulk = az.ess(idata, var_names=names, method="bulk")
    ess_tail = az.ess(idata, var_names=names, method="tail")
    rhat = az.rhat(idata, var_names=names)
    stats = idata.sample_stats
    return {
        "model": spec.name,
        "subjects": len(data.subjects),
        "observations": len(data.obs),
        "chains": chains,
        "draws": draws,
        "tune": tune,
        "cores": min(chains, os.cpu_count() or 1),
        "compile_s": compile_s,
        "compiled_cached": cached,
        "sampling_s": sampling_s,
        "ess_bulk_min": float(min(ess_bulk[v].min() for v in names)),
        "ess_tail_min": float(min(ess_tail[v].min() for v in names)),
        "rhat_max": float(max(rhat[v].max() for v in names)),
        "divergences": int(stats["diverging"].sum()),
        "chain_seconds": per_chain,
        "gradient_evaluations": gradients,
        "ms_per_gradient": 1000.0 * sum(per_chain) / gradients,
        "step_size_mean": float(stats["step_size"].mean()),
        "idata": idata,
    }


def _load_table(args: argparse.Namespace) -> pd.DataFrame:
    from ketamine_pmx.data import read_clean, validate_frame

    if args.data:
        return read_clean(args.data)
    from ketamine_pmx.config import load_config
    from ketamine_pmx.simulate import simulate_trial

    cfg = load_config(args.config)
    trial = simulate_trial(cfg)
    raw = trial.data.astype(str).replace({"nan": ".", "<NA>": "."})
    return validate_frame(raw, cfg["data"], "simulated trial").table


def main(argv: list[str] | None = None) -> None:
    from ketamine_pmx.models import load_pk_spec, with_bsv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/smoke.yaml", help="simulate this trial")
    parser.add_argument("--data", help="a clean dataset (CSV written by validate_data)")
    parser.add_argument("--spec", default="models/pk_2cmt_metab.yaml")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-accept", type=float, default=0.9)
    parser.add_argument(
        "--write-data", type=Path, metavar="JSON", help="write the program's data; fit nothing"
    )
    args = parser.parse_args(argv)
    table = _load_table(args)
    spec = with_bsv(load_pk_spec(args.spec), parameterisation="noncentred")
    if args.write_data:
        write_json(args.write_data, stan_data(prepare_pk_data(table, spec), spec))
        return
    result = fit_stan(
        table,
        spec,
        chains=args.chains,
        draws=args.draws,
        tune=args.tune,
        seed=args.seed,
        target_accept=args.target_accept,
    )
    result.pop("idata")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
