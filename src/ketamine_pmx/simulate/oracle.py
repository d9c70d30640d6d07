"""Oracle posteriors: the simulator's true parameters written as the models' posteriors.

A population PK "posterior" whose draws are the simulator's typical values, between-subject
SDs, CYP2B6 effects and residual SDs (optionally jittered to mimic posterior uncertainty), and
a response "posterior" whose linear predictor is the simulator's true one, in the response
model's parameterisation:

    logit p = a_g + b_x,g (log AUC_HNK - log AUC_ref,g) + b_d,g (DSER - ref) + b_m,g (MG - ref) / 0.1

is the response model with exposure centre log AUC_ref,g and scale 1, biomarker centres at the
references and scales 1 uM and 0.1 mmol/L, and no CYP2B6 effect beyond exposure.

They serve as known-truth inputs: tests of the dosing module that must not depend on a fit,
the speed benchmark of recommendations, and the virtual dosing trial's upper bound (what
model-guided dosing achieves when the model is exactly right). Where the model is simpler
than the simulator (no between-subject variability of q, no additive residual part), the
oracle takes the model's structure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from scipy.special import logit

from ketamine_pmx.models.pk_structure import CYP2B6_EFFECT_CLASSES
from ketamine_pmx.models.response_model import PREFIX
from ketamine_pmx.models.spec import PKSpec, ResponseSpec, bsv_groups


def _draws(value: np.ndarray, n: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    value = np.asarray(value, float)
    return value[None] + jitter * rng.standard_normal((n, *value.shape))


def oracle_pk_posterior(
    population: dict[str, Any], spec: PKSpec, n_draws: int = 200, jitter: float = 0.0, seed: int = 0
) -> xr.Dataset:
    """The simulator's PK truth as a posterior (chain 1, ``n_draws`` draws) of an
    enantiomer-specific metabolite model (``pk_2cmt_metab`` or ``pk_1cmt_metab``).

    ``jitter`` is the SD of normal noise added to every log-scale typical value (posterior
    uncertainty); omegas and residual SDs are taken as known.
    """
    if spec.structure["stereo"] != "enantiomers" or not spec.structure["metabolites"]:
        raise ValueError(f"the oracle covers enantiomer metabolite models, not {spec.name}")
    rng = np.random.default_rng(seed)
    pk = population["parameters"]["pk"]
    chains = list(spec.chains)
    ens = pk["enantiomers"]
    truth: dict[str, list[float]] = {
        "cl_f": [ens[c]["fm_nk"] * ens[c]["cl"] for c in chains],
        "cl_o": [(1 - ens[c]["fm_nk"]) * ens[c]["cl"] for c in chains],
    }
    for name in ("vc", "q", "vp", "cl_nk", "v_nk", "fm_hnk", "cl_hnk", "v_hnk"):
        truth[name] = [ens[c][name] for c in chains]
    if spec.structure["parent_compartments"] == 1:  # one-compartment parent: Vss as volume
        truth["vc"] = [ens[c]["vc"] + ens[c]["vp"] for c in chains]
    data: dict[str, Any] = {}
    for name, par in spec.parameters.items():
        if par["fixed"]:
            continue
        if name not in truth:
            raise ValueError(f"no true value for parameter {name} of {spec.name}")
        if spec.kind(name) == "fraction":
            data[f"logit_{name}_pop"] = (
                ("draw", "enantiomer"),
                _draws(logit(truth[name]), n_draws, jitter, rng),
            )
        else:
            data[f"log_{name}_pop"] = (
                ("draw", "enantiomer"),
                _draws(np.log(truth[name]), n_draws, jitter, rng),
            )
    for group in bsv_groups(spec.parameters):
        omega = float(pk["omega"].get(group, 0.0))
        data[f"omega_{group}"] = (("draw", "enantiomer"), np.full((n_draws, len(chains)), omega))
        if spec.spec["bsv"]["correlation"] == "enantiomer":
            rho = float(pk["enantiomer_eta_correlation"])
            data[f"rho_{group}"] = (("draw",), np.full(n_draws, rho))
    if spec.spec["covariates"].get("cyp2b6"):
        mult = pk["cyp2b6_clf_multiplier"]
        data["e_cyp2b6"] = (
            ("draw", "cyp2b6_class"),
            np.tile(np.log([mult[c] for c in CYP2B6_EFFECT_CLASSES]), (n_draws, 1)),
        )
    analytes = list(spec.analytes)
    sig = pk["residual"]["sigma_prop"]
    data["sigma_prop"] = (
        ("draw", "analyte"),
        np.tile([sig[a] for a in analytes], (n_draws, 1)),
    )
    ds = xr.Dataset(
        {k: (("chain", *dims), v[None]) for k, (dims, v) in data.items()},
        coords={
            "chain": [0],
            "draw": np.arange(n_draws),
            "enantiomer": chains,
            "cyp2b6_class": list(CYP2B6_EFFECT_CLASSES),
            "analyte": analytes,
        },
    )
    ds.attrs.update(oracle="simulator truth", jitter=float(jitter))
    return ds


def oracle_response(
    population: dict[str, Any], spec: ResponseSpec, n_draws: int = 200
) -> tuple[xr.Dataset, xr.Dataset]:
    """The simulator's true response mechanism as a response posterior and constant data."""
    r = population["parameters"]["response"]
    ref = population["reference_auc_hnk_ng_h_ml"]
    inds = sorted(ref)
    p = PREFIX["responder"]
    data: dict[str, Any] = {f"{p}intercept": [r["intercept"][g] for g in inds]}
    const: dict[str, Any] = {}
    if spec.exposure:
        if spec.exposure["metric"] != "AUC_HNK":
            raise ValueError("the oracle's exposure is AUC_HNK")
        data[f"{p}b_exposure"] = [r["b_log_auc_hnk"]] * len(inds)
        const["exposure_centre"] = ("indication", [float(np.log(ref[g])) for g in inds])
        const["exposure_scale"] = ((), 1.0)
    truth = {
        "DSER": ([r["b_dser_per_um"][g] for g in inds], r["dser_ref_um"], 1.0),
        "MG": ([r["b_mg_per_0p1_mmol_l"][g] for g in inds], r["mg_ref_mmol_l"], 0.1),
    }
    for term in spec.predictors:
        col = term["column"]
        if col not in truth:
            raise ValueError(f"the simulator has no effect of {col}")
        b, centre, scale = truth[col]
        data[f"{p}b_{col.lower()}"] = b
        const[f"centre_{col.lower()}"] = ((), float(centre))
        const[f"scale_{col.lower()}"] = ((), float(scale))
    post = {
        k: (("chain", "draw", "indication"), np.tile(np.asarray(v, float), (1, n_draws, 1)))
        for k, v in data.items()
    }
    if spec.spec["cyp2b6"]:
        post[f"{p}cyp2b6"] = (
            ("chain", "draw", "cyp2b6_class"),
            np.zeros((1, n_draws, len(CYP2B6_EFFECT_CLASSES))),
        )
    coords = {"chain": [0], "draw": np.arange(n_draws), "indication": inds}
    posterior = xr.Dataset(post, coords={**coords, "cyp2b6_class": list(CYP2B6_EFFECT_CLASSES)})
    return posterior, xr.Dataset(const, coords={"indication": inds})
