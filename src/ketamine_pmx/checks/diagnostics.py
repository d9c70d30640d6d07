"""Convergence diagnostics of a fit and the diagnostic gate every fit must pass.

The gate (:func:`gate`, thresholds from the config's ``gate`` section) fails a fit when any
population parameter has::

    R-hat > rhat_max (1.01),  bulk or tail ESS < ess_min (400),
    divergences > max_divergences (0),  or E-BFMI < e_bfmi_min (0.3)

:func:`diagnose` writes the table (:func:`diagnostics_table`: R-hat, ESS, mean, SD and 90%
interval per population parameter, and eta shrinkage 1 - SD(posterior-mean eta) / omega) and
``gate.json``; :func:`gate_allows` and :func:`gate_message` are what the workflow's gate rule
enforces. Beside the gate, :func:`parameter_flags` names what convergence checks cannot see:
estimates at a boundary of their support and between-subject SDs the data do not support, with
:func:`bsv_advice` proposing the model without them (a flag never fails the gate). The rules
are in ``docs/checks.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from ketamine_pmx.inference.pk_fit import is_innovation
from ketamine_pmx.io import write_csv, write_json


class GateError(RuntimeError):
    """The posterior failed the diagnostic gate."""


# --------------------------------------------------------------------------------------
# Diagnostics and the gate
# --------------------------------------------------------------------------------------


def population_variables(idata: az.InferenceData) -> list[str]:
    """Posterior variables that describe the population (not subjects, not predictions)."""
    post = idata.posterior
    return [
        v
        for v in post.data_vars
        if "subject" not in post[v].dims
        and "obs" not in post[v].dims
        and "patient" not in post[v].dims
        and not is_innovation(v)
        and not v.endswith("__")  # unconstrained twins (nutpie stores them too)
        and post[v].ndim >= 2
    ]


#: Defaults of the thresholds of :func:`parameter_flags` (config ``gate``).
FLAG_DEFAULTS = {
    "boundary_ratio": 0.1,
    "boundary_fraction": 0.05,
    "omega_min": 0.1,
    "omega_rse_max": 0.33,
}
#: Population quantities derived from two estimated ones, reported and flagged like the others
#: (not gated: their convergence is their parts').
DERIVED = {"fm_nk_pop": "share of the parent's clearance forming NK, cl_f / (cl_f + cl_o)"}


def derived_fractions(post: xr.Dataset) -> dict[str, xr.DataArray]:
    """Fractions a model defines through two estimated clearances, per draw: the share of the
    parent's clearance that forms NK, ``fm_nk_pop = cl_f / (cl_f + cl_o)`` (typical values)."""
    if "log_cl_f_pop" in post and "log_cl_o_pop" in post:
        return {"fm_nk_pop": 1.0 / (1.0 + np.exp(post["log_cl_o_pop"] - post["log_cl_f_pop"]))}
    return {}


def _elements(x: xr.DataArray) -> list[tuple[str, np.ndarray]]:
    """(element name as ArviZ writes it, its draws) for each element of a posterior variable."""
    dims = [d for d in x.dims if d not in ("chain", "draw")]
    if not dims:
        return [(str(x.name), x.values.ravel())]
    flat = x.stack(_element=dims).transpose("_element", ...)
    names = [v if isinstance(v, tuple) else (v,) for v in flat["_element"].values]
    return [
        (f"{x.name}[{', '.join(map(str, n))}]", flat.values[k].ravel()) for k, n in enumerate(names)
    ]


def parameter_flags(idata: az.InferenceData, rules: dict[str, Any] | None = None) -> dict[str, str]:
    """What the convergence checks cannot see: population estimates at a boundary of their
    support, and between-subject variability the data do not support. ``{element: reason}``.

    The rules (thresholds from ``rules``, the config's ``gate`` section; defaults in
    ``FLAG_DEFAULTS``), each on the posterior median m of the natural-scale value:

    - a positive parameter sampled on the log scale (``log_<name>_pop``: clearance, volume,
      rate) is *near 0* when m < ``boundary_ratio`` x its prior's typical value (the centre the
      spec gives it, recorded with the fit as ``prior_typical``; without it the rule is skipped);
    - a fraction (``logit_<name>_pop``, and the share of the parent's clearance forming NK,
      ``fm_nk_pop``, derived from cl_f and cl_o) is *near 0 or 1* when m < ``boundary_fraction``
      or m > 1 - ``boundary_fraction``;
    - a between-subject SD ``omega_<group>`` has its *posterior mass near 0* when
      P(omega < ``omega_min``) > 1/2 (the median below ``omega_min``; 0.1 is about a 10% CV),
      and is *not bounded away from 0* when its relative standard error, posterior SD / mean,
      exceeds ``omega_rse_max`` (0.33: its mass within 3 SDs of 0; a posterior piled at 0 like
      a half-normal has 0.76, a well-estimated omega of 0.25 from 200 rich profiles 0.1). Either
      way the data do not support the variability, and its removal (``bsv: false``) is proposed
      (:func:`bsv_advice`).

    A flag does not fail the gate: a parameter at its boundary usually means the model is wrong
    elsewhere (e.g. a fixed volume that the data contradict, pushed into a clearance), and
    variability without support makes the posterior hard to sample (a funnel at omega = 0).
    """
    r = {**FLAG_DEFAULTS, **{k: v for k, v in (rules or {}).items() if k in FLAG_DEFAULTS}}
    post = idata.posterior
    typical = json.loads(post.attrs.get("prior_typical", "{}"))
    derived = derived_fractions(post)
    flags: dict[str, str] = {}
    for var in [*population_variables(idata), *derived]:
        x = derived[var] if var in derived else post[var]
        x.name = var
        for element, draws in _elements(x):
            m = float(np.median(draws))
            if var.startswith("log_") and var.endswith("_pop") and element in typical:
                value, ref = float(np.exp(m)), float(typical[element])
                if value < r["boundary_ratio"] * ref:
                    flags[element] = (
                        f"near 0: median {value:.3g} < {r['boundary_ratio']:g} x the prior's "
                        f"typical value {ref:.3g} (boundary of its support)"
                    )
            elif var in derived or (var.startswith("logit_") and var.endswith("_pop")):
                value = m if var in derived else float(1.0 / (1.0 + np.exp(-m)))
                f = r["boundary_fraction"]
                if value < f or value > 1.0 - f:
                    edge = 0 if value < f else 1
                    label = f"; {DERIVED[var]}" if var in DERIVED else ""
                    flags[element] = (
                        f"near {edge}: median {value:.3g} within {f:g} of {edge} "
                        f"(boundary of its support{label})"
                    )
            elif var.startswith("omega_"):
                share = float(np.mean(draws < r["omega_min"]))
                mean, rse = float(draws.mean()), float(draws.std() / draws.mean())
                advice = f"consider removing BSV on {var[len('omega_') :]}"
                if share > 0.5:
                    flags[element] = (
                        f"posterior mass near 0: P(omega < {r['omega_min']:g}) = {share:.2f}, "
                        f"median {m:.3g}: {advice}"
                    )
                elif rse > r["omega_rse_max"]:
                    flags[element] = (
                        f"not bounded away from 0: relative SE {rse:.2f} > "
                        f"{r['omega_rse_max']:g} (mean {mean:.3g}, 5% quantile "
                        f"{np.quantile(draws, 0.05):.3g}): {advice}"
                    )
    return flags


def bsv_advice(idata: az.InferenceData, flags: dict[str, str]) -> list[str]:
    """BSV groups whose omega is flagged (near 0, or not bounded away from it) in every chain
    (enantiomer), as a proposal: the reduced model (``bsv: false`` on the group's parameters).
    ``flags`` holds the flagged elements only (:func:`parameter_flags`)."""
    post = idata.posterior
    groups = []
    for var in population_variables(idata):
        if not var.startswith("omega_"):
            continue
        elements = [e for e, _ in _elements(post[var].rename(var))]
        if all(e in flags for e in elements):
            groups.append(var[len("omega_") :])
    if not groups:
        return []
    return [
        f"remove between-subject variability on {', '.join(groups)} (bsv: false in the model "
        f"specification) and refit: the posterior of omega_{', omega_'.join(groups)} is not "
        "bounded away from 0 (see the flags), so the data do not support variability there"
    ]


def diagnostics_table(idata: az.InferenceData, rules: dict[str, Any] | None = None) -> pd.DataFrame:
    """R-hat, bulk/tail ESS, mean, SD, 5%/95% per population parameter element, derived
    fractions (``DERIVED``), eta shrinkage, and a ``flag`` column: the reason a population
    estimate is doubtful (:func:`parameter_flags`; empty when none)."""
    names = population_variables(idata)
    derived = derived_fractions(idata.posterior)
    post = idata.posterior.assign(derived) if derived else idata.posterior
    summ = az.summary(
        az.InferenceData(posterior=post),
        var_names=[*names, *derived],
        kind="all",
        round_to="none",
        stat_funcs={"q5": lambda x: np.quantile(x, 0.05), "q95": lambda x: np.quantile(x, 0.95)},
    )
    out = summ[["mean", "sd", "q5", "q95", "r_hat", "ess_bulk", "ess_tail"]].copy()
    out.index.name = "parameter"
    out = out.reset_index()
    shrink = [
        {"parameter": f"shrinkage_eta_{g}[{c}]", "mean": value}
        for (g, c), value in eta_shrinkage(idata).items()
    ]
    out = pd.concat([out, pd.DataFrame(shrink)], ignore_index=True) if shrink else out
    out["flag"] = out["parameter"].map(parameter_flags(idata, rules)).fillna("")
    return out


def eta_shrinkage(idata: az.InferenceData) -> dict[tuple[str, str], float]:
    """1 - SD(posterior mean eta over subjects) / omega (posterior mean), per group and chain.

    omega is ``omega_<group>``; an LKJ-correlated block (``bsv.correlation: lkj``) has none,
    and takes the SD of each (group, chain) in the block, ``chol_eta_stds`` (:func:`lkj_omegas`).
    """
    post = idata.posterior
    groups = [str(v)[len("eta_") :] for v in post.data_vars if str(v).startswith("eta_")]
    block = lkj_omegas(post, groups) if "chol_eta_stds" in post else {}
    out = {}
    for g in groups:
        v = f"eta_{g}"
        eta_mean = post[v].mean(("chain", "draw"))
        if f"omega_{g}" in post:
            omega = post[f"omega_{g}"].mean(("chain", "draw"))
        elif g in block:
            omega = block[g]
        else:
            omega = post[v].std("subject").mean(("chain", "draw"))
        sd = eta_mean.std("subject", ddof=1)
        for c in post[v].coords["enantiomer"].values:
            out[(g, str(c))] = float(1.0 - sd.sel(enantiomer=c) / omega.sel(enantiomer=c))
    return out


def lkj_omegas(post: xr.Dataset, groups: list[str]) -> dict[str, xr.DataArray]:
    """The posterior mean SD of each group's effects (over ``enantiomer``) in an LKJ-correlated
    block, from its SDs ``chol_eta_stds``: the block holds every group's effects, chain fastest,
    groups in the order the model drew them (``groups``: the ``eta_<group>`` of the posterior,
    in its order; :func:`ketamine_pmx.models.subject_effects.lkj_subject_effects`)."""
    stds = post["chol_eta_stds"].mean(("chain", "draw")).to_numpy()
    if not groups:
        return {}
    chains = post[f"eta_{groups[0]}"].coords["enantiomer"]
    if stds.size != len(groups) * chains.size:
        raise ValueError(
            f"chol_eta_stds holds {stds.size} SDs, but the posterior's {len(groups)} effect "
            f"group(s) over {chains.size} chain(s) make a block of {len(groups) * chains.size}"
        )
    per_group = stds.reshape(len(groups), chains.size)
    return {
        g: xr.DataArray(per_group[k], coords={"enantiomer": chains.values}, dims="enantiomer")
        for k, g in enumerate(groups)
    }


def run_statistics(idata: az.InferenceData) -> dict[str, Any]:
    stats = idata.sample_stats
    bfmi = az.bfmi(idata) if "energy" in stats else np.array([np.nan])
    return {
        "divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
        "e_bfmi_min": float(np.min(bfmi)),
        "chains": int(idata.posterior.sizes["chain"]),
        "draws": int(idata.posterior.sizes["draw"]),
    }


def gate(table: pd.DataFrame, stats: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """Failures of the diagnostic gate (empty when it passes)."""
    name = table["parameter"].str.split("[", regex=False).str[0]
    params = table[~table["parameter"].str.startswith("shrinkage_") & ~name.isin(list(DERIVED))]
    failures = []
    worst_rhat = params.loc[params["r_hat"].idxmax()]
    if worst_rhat["r_hat"] > rules["rhat_max"]:
        failures.append(
            f"R-hat {worst_rhat['r_hat']:.3f} > {rules['rhat_max']} ({worst_rhat['parameter']})"
        )
    for col in ("ess_bulk", "ess_tail"):
        worst = params.loc[params[col].idxmin()]
        if worst[col] < rules["ess_min"]:
            failures.append(f"{col} {worst[col]:.0f} < {rules['ess_min']} ({worst['parameter']})")
    if stats["divergences"] > rules["max_divergences"]:
        failures.append(
            f"{stats['divergences']} divergent transitions > {rules['max_divergences']} "
            "(a higher target_accept takes smaller steps: config sampler.pk.target_accept or "
            "sampler.response.target_accept)"
        )
    if stats["e_bfmi_min"] < rules["e_bfmi_min"]:
        failures.append(f"E-BFMI {stats['e_bfmi_min']:.2f} < {rules['e_bfmi_min']}")
    return failures


def write_diagnostics(
    table: pd.DataFrame,
    stats: dict[str, Any],
    failures: list[str],
    csv_path,
    json_path,
    advice: list[str] | None = None,
) -> None:
    """``diagnostics.csv`` (the table) and ``gate.json``: the run statistics, the gate's result
    and failures, ``flags`` (``"<element>: <reason>"``, from the table's flag column) and
    ``advice`` (:func:`bsv_advice`)."""
    flagged = table[table["flag"] != ""]
    write_csv(csv_path, table, float_format="%.6g")
    write_json(
        json_path,
        {
            **stats,
            "gate_passed": not failures,
            "gate_failures": failures,
            "flags": [
                f"{p}: {f}" for p, f in zip(flagged["parameter"], flagged["flag"], strict=True)
            ],
            "advice": list(advice or []),
        },
    )


def diagnose(idata: az.InferenceData, rules: dict[str, Any], csv_path, json_path) -> list[str]:
    """Diagnostics table, flags and gate of any posterior, written out; the gate's failures."""
    table = diagnostics_table(idata, rules)
    stats = run_statistics(idata)
    failures = gate(table, stats, rules)
    flags = dict(zip(table["parameter"], table["flag"], strict=True))
    write_diagnostics(
        table,
        stats,
        failures,
        csv_path,
        json_path,
        bsv_advice(idata, {k: v for k, v in flags.items() if v}),
    )
    return failures


def gate_allows(rules: dict[str, Any], model: str) -> bool:
    """Whether a failed gate may let the run go on for this model (config ``gate``)."""
    return bool(rules["allow_failure"]) or model in rules.get("allow_failure_for", [])


def gate_notes(gate_json: dict[str, Any] | str | Path) -> list[str]:
    """The flags and advice of a ``gate.json`` (its content, or its path) as lines for a log or
    a message."""
    if not isinstance(gate_json, dict):
        gate_json = json.loads(Path(gate_json).read_text(encoding="utf-8"))
    return [f"flag {f}" for f in gate_json.get("flags", [])] + [
        f"proposal: {a}" for a in gate_json.get("advice", [])
    ]


def gate_message(model: str, failures: list[str], notes: list[str] | None = None) -> str:
    """The failed gate's message; ``notes`` (:func:`gate_notes`) follow the failures."""
    text = f"diagnostic gate FAILED for {model}:\n  - " + "\n  - ".join(failures)
    return text + "".join(f"\n  {n}" for n in notes or [])


def enforce_gate(
    model: str, gate_json: str | Path, table_csv: str | Path, gate: dict[str, Any]
) -> dict[str, Any]:
    """The diagnostic gate enforced on a model's kept ``gate.json`` (:func:`diagnose`): the
    gate check the later stages require, or :class:`GateError` when the gate failed and the
    config's ``gate`` section does not let this model past (:func:`gate_allows`).

    The check holds the model, whether the gate passed, whether the run goes on past a failed
    gate, which setting allowed that (``gate.allow_failure`` or ``gate.allow_failure_for``) and
    the failures. The error's message lists the failures, flags and proposals, names the kept
    ``gate_json`` and ``table_csv`` (diagnostics.csv), and says which setting would continue.
    """
    record = json.loads(Path(gate_json).read_text(encoding="utf-8"))
    failures = list(record["gate_failures"])
    passed = not failures
    if not passed and not gate_allows(gate, model):
        raise GateError(
            gate_message(model, failures, gate_notes(record))
            + f"\nDiagnostics kept in {table_csv} and {gate_json}."
            + "\n(set gate.allow_failure: true, or list the model in gate.allow_failure_for, "
            "to continue)"
        )
    return {
        "model": model,
        "gate_passed": passed,
        "allowed_past_failed_gate": not passed,
        "allowed_by": None
        if passed
        else ("gate.allow_failure" if gate["allow_failure"] else "gate.allow_failure_for"),
        "gate_failures": failures,
    }
