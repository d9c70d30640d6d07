"""Estimates against the simulator's truth: PK parameters and response effects.

On simulated data a fit is checked against what it should recover. :func:`compare_with_truth`
sets each population PK parameter's posterior mean and 90% interval beside the simulator's
population value and the value realised in the trial's subjects; :func:`effects_vs_truth`
sets the response models' logit-scale effects beside the true ones and beside
:func:`known_exposure_fit`, the logistic regression of the trial's observed responders on every
patient's true exposure, D-serine and Mg (what the trial itself says once PK uncertainty is
removed: it separates a trial's chance from a method's bias).
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from ketamine_pmx.models.spec import ResponseSpec
from ketamine_pmx.response import effect_draws


def compare_with_truth(
    idata: az.InferenceData,
    truth: dict[str, float],
    prob: float = 0.90,
    sample_truth: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Posterior mean and central interval of each parameter against a known true value.

    ``truth`` maps a posterior element (``"log_cl_f_pop[S]"``, ``"omega_cl[R]"``, ...) to its
    true value *on the natural scale* (``log_`` and ``logit_`` variables are compared after
    exp / inverse-logit; ``e_cyp2b6`` as the multiplier exp(e)). Elements missing from the
    posterior are skipped. ``sample_truth`` (same keys; e.g.
    :func:`ketamine_pmx.simulate.sample_pk_truth`, the values realised in the trial's
    subjects) adds the columns ``sample_truth`` and ``inside_sample``.
    """
    post = idata.posterior
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for element, true in truth.items():
        var, _, coord = element.partition("[")
        if var not in post:
            continue
        x = post[var]
        if coord:
            dim = next(d for d in x.dims if d not in ("chain", "draw"))
            x = x.sel({dim: coord.rstrip("]")})
        x = x.values.ravel()
        if var.startswith("logit_"):
            x, name = 1 / (1 + np.exp(-x)), element.replace("logit_", "", 1)
        elif var.startswith("log_") or var == "e_cyp2b6":
            x, name = np.exp(x), element.replace("log_", "", 1)
        else:
            name = element
        q_lo, q_hi = np.quantile(x, [lo, hi])
        rows.append(
            {
                "parameter": name,
                "truth": true,
                "mean": float(x.mean()),
                f"q{lo * 100:g}": float(q_lo),
                f"q{hi * 100:g}": float(q_hi),
                "inside": bool(q_lo <= true <= q_hi),
            }
        )
        if sample_truth is not None:
            realised = sample_truth.get(element, np.nan)
            rows[-1]["sample_truth"] = realised
            rows[-1]["inside_sample"] = bool(q_lo <= realised <= q_hi)
    return pd.DataFrame(rows)


def known_exposure_fit(idata: az.InferenceData, subjects: pd.DataFrame) -> dict[str, float] | None:
    """What this trial's own responders say when every patient's true exposure is known.

    Per indication, the maximum-likelihood logistic regression of the observed responder on
    the simulator's true log AUC of HNK, D-serine and Mg (``subjects``: the simulator's
    ``truth_subjects.csv``), centred as the response model centres them. Keys as in
    :func:`effects_vs_truth`. The population truth is what the model targets over trials;
    this is the answer of this one trial without any PK uncertainty, so a truth outside the
    model's interval but near this estimate is the trial's chance, not the method's bias.
    None when the model lacks a term (the regression has the true structure's terms).
    """
    const = idata.constant_data
    if not {"exposure_centre", "centre_dser", "centre_mg"} <= set(const.data_vars):
        return None
    truth = subjects.set_index("ID")
    ids = idata.observed_data["patient"].to_numpy()
    y = np.asarray(idata.observed_data["responder"], float)
    ind = const["indication_of_patient"].to_numpy().astype(str)
    tr = truth.loc[ids]
    out: dict[str, float] = {}
    for g in map(str, const["indication"].to_numpy()):
        keep = (ind == g) & np.isfinite(y)
        x = np.column_stack(
            [
                np.ones(keep.sum()),
                np.log(tr["AUC_HNK"].to_numpy(float)[keep])
                - float(const["exposure_centre"].sel(indication=g)),
                tr["DSER"].to_numpy(float)[keep] - float(const["centre_dser"]),
                (tr["MG"].to_numpy(float)[keep] - float(const["centre_mg"])) / 0.1,
            ]
        )
        yg = y[keep]

        def nll(beta: np.ndarray, x: np.ndarray = x, yg: np.ndarray = yg) -> tuple[float, Any]:
            eta = x @ beta
            value = np.sum(np.logaddexp(0.0, eta) - yg * eta)
            return float(value), x.T @ (expit(eta) - yg)

        fit = minimize(nll, np.zeros(4), jac=True, method="BFGS")
        a, bx, bd, bm = fit.x
        out |= {
            f"intercept[{g}]": a,
            f"b_log_auc_hnk[{g}]": bx,
            f"b_dser_per_um[{g}]": bd,
            f"b_mg_per_0p1_mmol_l[{g}]": bm,
        }
    return out


def effects_vs_truth(
    idata: az.InferenceData,
    spec: ResponseSpec,
    truth: dict[str, Any],
    prob: float = 0.90,
    subjects: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Responder effects per natural unit against the simulator's true ones.

    ``truth`` is the simulator's ``truth_population.json``. Compared on the logit scale: the
    exposure effect per unit log AUC of HNK (same in both indications), D-serine per uM and Mg
    per 0.1 mmol/L per indication, and each indication's intercept after moving the truth's
    reference point (typical patient's AUC, D-serine 3.9 uM, Mg 0.85 mmol/L) to the model's
    (the patients' mean of each), so that the two intercepts mean the same thing. With the
    simulator's ``subjects``, a column ``known_exposure_mle`` gives :func:`known_exposure_fit`.
    """
    eff = truth["logit_scale_effects"]
    params = truth["parameters"]["response"]
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    draws = effect_draws(idata, spec, "responder")
    const = idata.constant_data
    rows = []

    def row(name: str, true: float, d: np.ndarray) -> None:
        q_lo, q_hi = np.quantile(d, [lo, hi])
        rows.append(
            {
                "parameter": name,
                "truth": float(true),
                "mean": float(d.mean()),
                f"q{lo * 100:g}": float(q_lo),
                f"q{hi * 100:g}": float(q_hi),
                "inside": bool(q_lo <= true <= q_hi),
            }
        )

    true_by = {}
    for name, e in draws.items():
        col = e["term"]["column"]
        for k, scope in enumerate(e["scopes"][1:], start=1):
            if name == "exposure":
                if col != "AUC_HNK":
                    continue
                true = eff["b_log_auc_hnk"]
                row(f"b_log_auc_hnk[{scope}]", true, e["per_natural"][:, k])
            elif col == "DSER":
                true = eff["b_dser_per_um"][scope]
                row(f"b_dser_per_um[{scope}]", true, e["per_natural"][:, k])
            elif col == "MG":
                true = eff["b_mg_per_0p1_mmol_l"][scope] / 0.1
                row(f"b_mg_per_0p1_mmol_l[{scope}]", true * 0.1, e["per_natural"][:, k] * 0.1)
            else:
                continue
            true_by[(col, scope)] = true
    post = idata.posterior.stack(sample=("chain", "draw"))
    ref_auc = truth.get("reference_auc_hnk_ng_h_ml", {})
    covered = all((c, g) in true_by for c in ("DSER", "MG") for g in ref_auc)
    if spec.exposure and spec.exposure["metric"] == "AUC_HNK" and covered:
        for g, auc_ref in ref_auc.items():
            if g not in post["indication"]:
                continue
            shift = eff["b_log_auc_hnk"] * (
                float(const["exposure_centre"].sel(indication=g)) - np.log(auc_ref)
            )
            shift += true_by[("DSER", g)] * (float(const["centre_dser"]) - params["dser_ref_um"])
            shift += true_by[("MG", g)] * (float(const["centre_mg"]) - params["mg_ref_mmol_l"])
            row(
                f"intercept[{g}]",
                eff["intercept_logit"][g] + shift,
                post["intercept"].sel(indication=g).to_numpy(),
            )
    table = pd.DataFrame(rows)
    reference = known_exposure_fit(idata, subjects) if subjects is not None else None
    if reference is not None and not table.empty:
        table["known_exposure_mle"] = table["parameter"].map(reference)
    return table
