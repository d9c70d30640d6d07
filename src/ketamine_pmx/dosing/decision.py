r"""The dose decision: the best regimen within the safety limits, and why (docs/design.md 7).

For each patient and open regimen r (its P(response) p_r and each limit's exceedance
probability q_r,l from :mod:`ketamine_pmx.dosing.evaluation`)::

    acceptable(r)  =  q_r,l <= tolerated_l  for every safety limit l
    best           =  argmax p_r over the acceptable regimens (the grid's order breaks ties)
    tie(r)         =  p_best - p_r <= decision.margin
                      or  p_best - p_r <= decision.tie_mcse * sd(p_best,s - p_r,s) / sqrt(n)

Of the regimens tied with the best, the lowest median cumulative ketamine exposure is
recommended, then the smaller amount, then the first in the grid's order, so that simulation
noise never decides between near-equal regimens. A patient no regimen is open to (caps below
every candidate, or no family for the indication and setting), or none of whose open regimens
is acceptable, gets a row saying so (``STATUS``, ``REASON``). A patient whose best acceptable
P(response) stays below ``decision.min_p_response`` is flagged as a likely non-responder, and
``DRIVER`` names the factor that lowers the response logit most (by at least
``DRIVER_MIN_LOGIT``) against a typical patient of the indication: the fitted coefficient
times the patient's standardised value, the value called high or low from its side of the
trial's mean. :func:`recommend` runs the whole stage: each patient's PK posterior, every
regimen's evaluation, this decision.

The safety limits and tolerated probabilities (``dosing.safety``) are assumptions for the user
to set; the recommendations are model outputs, not medical advice. The full method (the
patient's posterior, superposition, Monte Carlo errors, common random numbers) is in
``docs/dosing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ketamine_pmx.dosing.evaluation import REGIMEN_COLUMNS, REGIMEN_FIELDS, evaluate_regimens
from ketamine_pmx.dosing.fits import ReferenceFits
from ketamine_pmx.dosing.patient_posterior import IndividualPosterior, individual_posterior
from ketamine_pmx.dosing.regimens import Regimen, open_mask, regimen_grid

# --------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------

RECOMMENDATION_COLUMNS = (
    "ID",
    "INDICATION",
    "SETTING",
    "METHOD",
    "ESS",
    "STATUS",
    "RECOMMENDED",
    *REGIMEN_FIELDS,
    "N_CANDIDATES",
    "N_ACCEPTABLE",
    "N_TIED",
    "BEST_P_RESPONSE_ANY",
    "LIKELY_NON_RESPONDER",
    "DRIVER",
    "REASON",
)
#: STATUS of a patient's row.
STATUS_RECOMMENDED = "recommended"
STATUS_CAPS = "no regimen within the patient's caps"
STATUS_SETTING = "no regimen for the patient's indication and setting"
STATUS_SAFETY = "no regimen within the safety limits"
#: A factor is named as a driver when it lowers the response logit by at least this much
#: (mean over the draws) against a typical patient of the indication.
DRIVER_MIN_LOGIT = 0.1
#: Covariates the response models use: what the driver calls them, and their unit.
_FACTOR_NAMES = {"DSER": ("D-serine", "uM"), "MG": ("Mg", "mmol/L")}
_NO_DRIVER = "none (typical patient for the indication)"


def _driver(
    patient: pd.Series,
    contrib: dict[str, float],
    expo_logit: float,
    metric: str,
    expo_z: float = -1.0,
) -> tuple[str, float]:
    """The factor that lowers the response logit most against a typical patient of the
    indication (biomarkers at the fitted trial's means, CYP2B6 NM, the trial's mean exposure),
    or ``("", 0)`` when none lowers it by :data:`DRIVER_MIN_LOGIT`.

    A factor's contribution is its fitted coefficient times the patient's standardised value
    (mean over draws), so it is negative only when the fitted sign and the patient's side of
    the mean together lower the response; the text calls the value high or low from that side
    (``<COL>_Z`` in ``contrib``; ``expo_z`` for the exposure), never from the coefficient."""
    factors = {
        k: v for k, v in contrib.items() if not k.endswith(("_Z", "_MEAN")) and k != "TYPICAL_P"
    }
    name, value = min({"exposure": expo_logit, **factors}.items(), key=lambda kv: kv[1])
    if value > -DRIVER_MIN_LOGIT:
        return "", value
    if name == "exposure":
        side = "low" if expo_z < 0 else "high"
        cls = patient.get("CYP2B6_CLASS")
        why = f"; CYP2B6 {cls} metaboliser" if side == "low" and cls in ("IM", "PM") else ""
        return f"{side} predicted {metric.removeprefix('AUC_')} exposure{why}", value
    if name == "CYP2B6":
        return f"CYP2B6 {patient['CYP2B6_CLASS']} class", value
    label, unit = _FACTOR_NAMES.get(name, (name, ""))
    side = "high" if contrib.get(f"{name}_Z", 0.0) > 0 else "low"
    text = f"{side} {label} ({patient[name]:.3g}{' ' + unit if unit else ''}"
    mean = contrib.get(f"{name}_MEAN")
    text += f", trial mean {mean:.3g})" if mean is not None else ")"
    return text, value


def _closed(pat: pd.Series, grid: list[Regimen] | None) -> tuple[str, str]:
    """STATUS and REASON of a patient no candidate regimen is open to."""
    one = pd.DataFrame([pat])
    caps = {
        c: float(pat[c])
        for c in ("MAX_DOSE_MG_KG", "MAX_RATE_MG_H")
        if c in pat.index and pd.notna(pat[c])
    }
    fits = [r for r in grid or [] if open_mask(r, one.drop(columns=list(caps)))[0]]
    if grid is not None and not fits:
        return STATUS_SETTING, (
            f"no candidate regimen family covers {pat['INDICATION']} in the "
            f"{pat['SETTING']} setting (dosing.regimens)"
        )
    if not caps:
        return STATUS_SETTING, "no candidate regimen is open to this patient"
    smallest = []
    if fits and "MAX_DOSE_MG_KG" in caps:
        doses = [r.dose_mg_kg for r in fits if r.dose_mg_kg is not None]
        smallest += [f"smallest candidate dose {min(doses):g} mg/kg"] if doses else []
    if fits and "MAX_RATE_MG_H" in caps:
        rates = [r.rate_mg_h for r in fits if r.rate_mg_h is not None]
        smallest += [f"smallest candidate rate {min(rates):g} mg/h"] if rates else []
    given = ", ".join(f"{k} {v:g}" for k, v in caps.items())
    more = f"; {', '.join(smallest)}" if smallest else ""
    return STATUS_CAPS, f"every candidate regimen lies above the patient's caps ({given}{more})"


def decide(
    table: pd.DataFrame,
    patients: pd.DataFrame,
    contrib: dict[str, np.ndarray],
    post: IndividualPosterior,
    dosing: dict[str, Any],
    metric: str,
    grid: list[Regimen] | None = None,
) -> pd.DataFrame:
    """The recommended regimen of every patient, with why (see the module docstring).

    Every patient gets a row; one without a recommendation says why in ``STATUS`` and
    ``REASON`` (caps, setting or safety limits) with the regimen and probabilities empty.
    ``dosing`` is the config's section of that name (its ``decision`` and ``safety``).
    ``grid`` (the candidate regimens) lets the reason tell caps from an uncovered setting.
    """
    dec, safety = dosing["decision"], dosing["safety"]
    k_se = dec["tie_mcse"]
    out = []
    by_patient = dict(tuple(table.groupby("patient", sort=False)))
    for i, (_, pat) in enumerate(patients.iterrows()):
        rows = by_patient.get(i)
        base = {
            "ID": pat["ID"],
            "INDICATION": pat["INDICATION"],
            "SETTING": pat["SETTING"],
            "METHOD": post.method[i],
            "ESS": round(float(post.ess[i]), 1),
            "RECOMMENDED": False,
            "LIKELY_NON_RESPONDER": False,
            "DRIVER": "",
        }
        if rows is None:
            status, reason = _closed(pat, grid)
            out.append(
                {**base, "STATUS": status, "N_CANDIDATES": 0, "N_ACCEPTABLE": 0, "REASON": reason}
            )
            continue
        ok = rows[rows["ACCEPTABLE"]]
        best_any = float(rows["P_RESPONSE"].max())
        c = {k: float(v[i]) for k, v in contrib.items()}
        if ok.empty:
            out.append(
                {
                    **base,
                    "STATUS": STATUS_SAFETY,
                    "N_CANDIDATES": len(rows),
                    "N_ACCEPTABLE": 0,
                    "BEST_P_RESPONSE_ANY": best_any,
                    "REASON": (
                        f"each of the {len(rows)} candidate regimens exceeds a safety limit "
                        "with more than its tolerated probability (lowest P(peak > "
                        f"{safety['peak_ketamine_ng_ml']:g} ng/mL) "
                        f"{rows['P_PEAK_EXCEEDED'].min():.2f}, tolerated "
                        f"{safety['peak_tolerated_probability']:g}; lowest P(cumulative AUC > "
                        f"{safety['cumulative_auc_ng_h_ml']:g} ng h/mL) "
                        f"{rows['P_CUM_EXCEEDED'].min():.2f}, tolerated "
                        f"{safety['cumulative_tolerated_probability']:g})"
                    ),
                }
            )
            continue
        best = float(ok["P_RESPONSE"].max())
        # Equally good: within the margin of the best, or within k_se Monte Carlo standard
        # errors of the paired difference; then the lowest cumulative exposure, the smaller
        # amount, and the table's (grid) order.
        tol = np.maximum(dec["margin"], k_se * ok["P_RESPONSE_GAP_SE"].fillna(0.0))
        tied = ok[best - ok["P_RESPONSE"] <= tol]
        chosen = tied.sort_values(["CUM_AUC_KET_MEDIAN", "TOTAL_MG"], kind="stable").iloc[0]
        flag = best < dec["min_p_response"]
        # a flagged patient's reason is read at the best acceptable regimen (a cheaper tied
        # one would blame its lower exposure for what no acceptable dose overcomes)
        at = ok.loc[ok["P_RESPONSE"].idxmax()] if flag else chosen
        driver, _ = _driver(pat, c, float(at["EXPOSURE_LOGIT"]), metric, float(at["EXPOSURE_Z"]))
        if flag and not driver:
            driver = (
                f"no single factor lowers it by {DRIVER_MIN_LOGIT:g} on the logit scale: "
                f"response is unlikely at every acceptable regimen (best {best:.2f}; a "
                f"typical {pat['INDICATION']} patient {c.get('TYPICAL_P', np.nan):.2f} at the "
                "trial's mean exposure)"
            )
        reason = (
            f"highest P(response) within the safety limits (best {best:.2f}); lowest "
            f"cumulative exposure among {len(tied)} regimen(s) as good as it (within "
            f"{dec['margin']:.2f} or {k_se:g} Monte Carlo SE of the difference)"
        )
        if flag:
            reason += f"; below {dec['min_p_response']:.2f}: likely non-responder"
        out.append(
            {
                **base,
                **{k: chosen[k] for k in RECOMMENDATION_COLUMNS if k in chosen.index},
                "STATUS": STATUS_RECOMMENDED,
                "RECOMMENDED": True,
                "N_CANDIDATES": len(rows),
                "N_ACCEPTABLE": len(ok),
                "N_TIED": len(tied),
                "BEST_P_RESPONSE_ANY": best_any,
                "LIKELY_NON_RESPONDER": flag,
                "DRIVER": driver or _NO_DRIVER,
                "REASON": reason,
            }
        )
    rec = pd.DataFrame(out, columns=list(RECOMMENDATION_COLUMNS))
    return rec.astype({"RECOMMENDED": bool, "LIKELY_NON_RESPONDER": bool})


@dataclass
class Recommendation:
    """The result for a set of patients."""

    recommendations: pd.DataFrame  # one row per patient
    regimens: pd.DataFrame  # one row per (patient, candidate regimen)
    posterior: IndividualPosterior
    notes: list[str]


def recommend(
    models: ReferenceFits,
    patients: pd.DataFrame,
    dosing: dict[str, Any],
    seed: int,
    concentrations: pd.DataFrame | None = None,
    force: str | None = None,
) -> Recommendation:
    """Individual posteriors, every candidate regimen, and the decision, for checked patients.

    ``models`` are the reference PK and response fits; ``dosing`` is the config's section of
    that name.
    """
    grid = regimen_grid(dosing)
    if patients.empty:
        return Recommendation(
            pd.DataFrame(columns=list(RECOMMENDATION_COLUMNS)),
            pd.DataFrame(columns=[c for c in REGIMEN_COLUMNS if c != "patient"]),
            IndividualPosterior({}, [], np.zeros(0)),
            [],
        )
    post = individual_posterior(models, patients, concentrations, dosing, seed, force)
    table, contrib = evaluate_regimens(models, patients, post, grid, dosing, seed + 1)
    metric = models.resp_spec.exposure["metric"] if models.resp_spec.exposure else "AUC_HNK"
    rec = decide(table, patients, contrib, post, dosing, metric, grid)
    return Recommendation(rec, table.drop(columns="patient"), post, post.notes)
