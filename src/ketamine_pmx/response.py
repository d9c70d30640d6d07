r"""The headline effects of the response models: who responds, and by how much.

For each term k of a response model (exposure, D-serine, Mg), overall (beta_k) and per
indication (b_k,g = beta_k + tau_k u_k,g), from the coefficient per SD of its standardised
predictor::

    per SD           b
    per unit         b * unit / scale       (1 uM D-serine, 0.1 mmol/L Mg: the card's unit)
    per doubling     b * log(2) / scale     (exposure, standardised on the log scale)

Responder effects are odds ratios (exp of the logit-scale effect); percent-change effects are
percentage points of change from baseline (negative is more improvement). :func:`effects_table`
gives each with its median, interval and the posterior probability of the direction the card
hypothesises. The models themselves are built in ``ketamine_pmx.models.response_model`` and
fitted in ``ketamine_pmx.inference``; their equations and why exposure enters with its PK
uncertainty integrated out are in ``docs/response_model.md``.
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import pandas as pd

from ketamine_pmx.models.response_model import PREFIX
from ketamine_pmx.models.spec import ResponseSpec

# --------------------------------------------------------------------------------------
# Effects: odds ratios (responder), percentage points (pct_change)
# --------------------------------------------------------------------------------------

HYPOTHESIS_SIGN = {"positive": 1.0, "negative": -1.0}


def effect_draws(
    idata: az.InferenceData, spec: ResponseSpec, outcome: str
) -> dict[str, dict[str, Any]]:
    """Per term: draws (sample, scope) of the effect per SD of its predictor and per unit.

    Scopes: ``all`` (the population effect beta) and each indication (beta + its deviation).
    The unit is the spec's clinical unit for a biomarker and a doubling for exposure.
    """
    post = idata.posterior.stack(sample=("chain", "draw"))
    const = idata.constant_data
    p = PREFIX[outcome]
    out = {}
    for term in spec.terms():
        beta = post[f"{p}beta_{term['name']}"].to_numpy()
        b = post[f"{p}b_{term['name']}"].transpose("sample", "indication")
        scopes = ["all", *map(str, b["indication"].to_numpy())]
        per_sd = np.column_stack([beta, b.to_numpy()])
        if term["name"] == "exposure":
            scale = float(const["exposure_scale"])
            per_unit = per_sd * np.log(2.0) / scale
            per_natural = per_sd / scale  # per unit of log exposure (e-fold)
            unit, natural = "doubling of exposure", "log exposure"
        else:
            scale = float(const[f"scale_{term['column'].lower()}"])
            per_unit = per_sd * term["clinical_unit"] / scale
            per_natural = per_sd / scale
            unit, natural = term["unit_label"], term["column"]
        out[term["name"]] = {
            "term": term,
            "scopes": scopes,
            "per_sd": per_sd,
            "per_unit": per_unit,
            "per_natural": per_natural,
            "unit": unit,
            "natural_unit": natural,
        }
    return out


def effects_table(idata: az.InferenceData, spec: ResponseSpec, prob: float = 0.90) -> pd.DataFrame:
    """The headline table: each effect per SD and per clinical unit, interval and P(direction).

    Responder effects are odds ratios (exp of the logit-scale effect); percent-change effects
    are percentage points of change from baseline (negative is more improvement, so a
    predictor hypothesised to favour response is expected to have a negative effect there).
    """
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for outcome in spec.outcomes:
        binary = outcome == "responder"
        for _name, e in effect_draws(idata, spec, outcome).items():
            sign = HYPOTHESIS_SIGN[e["term"]["hypothesis"]] * (1.0 if binary else -1.0)
            for k, scope in enumerate(e["scopes"]):
                sd_d, unit_d = e["per_sd"][:, k], e["per_unit"][:, k]
                tr = np.exp if binary else (lambda v: v)
                rows.append(
                    {
                        "model": spec.name,
                        "outcome": outcome,
                        "predictor": e["term"]["column"],
                        "scope": scope,
                        "measure": "odds ratio" if binary else "percentage points",
                        "per_sd_median": float(tr(np.median(sd_d))),
                        f"per_sd_q{lo * 100:g}": float(tr(np.quantile(sd_d, lo))),
                        f"per_sd_q{hi * 100:g}": float(tr(np.quantile(sd_d, hi))),
                        "unit": e["unit"],
                        "per_unit_median": float(tr(np.median(unit_d))),
                        f"per_unit_q{lo * 100:g}": float(tr(np.quantile(unit_d, lo))),
                        f"per_unit_q{hi * 100:g}": float(tr(np.quantile(unit_d, hi))),
                        "hypothesis": e["term"]["hypothesis"],
                        "p_hypothesised_direction": float(np.mean(sign * sd_d > 0)),
                    }
                )
    return pd.DataFrame(rows)


__all__ = [
    "HYPOTHESIS_SIGN",
    "effect_draws",
    "effects_table",
]
