"""Every candidate regimen of every patient: exposures, P(response), P(limit exceeded).

Concentrations are linear in the dose, so one unit infusion per chain and patient draw gives
every regimen by superposition (c1 the parent concentration and A1 an analyte's AUC of a unit
infusion of length d, w_c the formulation's share of chain c, I the interval)::

    peak ketamine  = amount * sum_c w_c sum_(m<n) c1_c(d + I m)
    AUC to T       = amount * sum_c w_c sum_(k<n) A1_c(T - I k)

with T the primary endpoint; the same sum for total ketamine over the course is its cumulative
exposure. The response model's exposure metric enters its linear predictor as in the fit, each
PK draw paired with a response-posterior draw, so P(response) averages over PK uncertainty,
between-subject variability and the response effects' uncertainty. Every probability carries
its Monte Carlo standard error (``*_MCSE``) over the effective draws; an exceedance share's
error is taken at its Jeffreys estimate (k + 1/2) / (S + 1), so that 0 of S draws reads as the
draws' resolution, not as certainty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from ketamine_pmx.contract import CYP2B6_CLASSES, DOSE_TARGETS
from ketamine_pmx.dosing.fits import DosingError, ReferenceFits, take_draws
from ketamine_pmx.dosing.patient_posterior import IndividualPosterior
from ketamine_pmx.dosing.regimens import Regimen, auc_times, open_mask
from ketamine_pmx.exposure.draws import SUM_ANALYTES
from ketamine_pmx.exposure.unit_curves import course_auc, unit_infusion_curves
from ketamine_pmx.models.response_model import PREFIX
from ketamine_pmx.models.spec import CHAIN_ANALYTES


def _exposure_target(models: ReferenceFits) -> tuple[int, np.ndarray] | None:
    """(chain level, chain weights) of the response model's AUC metric, or None."""
    spec = models.pk_spec
    if not models.resp_spec.exposure:
        return None
    analyte = models.resp_spec.exposure["metric"].removeprefix("AUC_")
    chains = list(spec.chains)
    if analyte in SUM_ANALYTES and spec.structure["stereo"] == "enantiomers":
        return SUM_ANALYTES.index(analyte), np.ones(len(chains))
    names = CHAIN_ANALYTES[spec.structure["stereo"]]
    for c, chain in enumerate(chains):
        if analyte in names[chain]:
            w = np.zeros(len(chains))
            w[c] = 1.0
            return names[chain].index(analyte), w
    raise DosingError(f"exposure metric AUC_{analyte} is not an analyte of {spec.name}")


@dataclass
class ResponseDraws:
    """Response-model draws, each paired with one PK draw, and the fit's standardisation."""

    intercept: np.ndarray  # (sample, indication)
    b_exposure: np.ndarray | None  # (sample, indication)
    b: dict[str, np.ndarray]  # column -> (sample, indication)
    cyp: np.ndarray  # (sample, 3): 0 for NM
    centre: dict[str, float]
    scale: dict[str, float]
    exposure_centre: dict[str, float]
    exposure_scale: float
    indications: list[str]


def response_draws(models: ReferenceFits, n: int, rng: np.random.Generator) -> ResponseDraws:
    post = take_draws(models.resp_posterior, n, rng)
    spec, const = models.resp_spec, models.resp_const
    p = PREFIX["responder"]
    inds = [str(g) for g in post["indication"].to_numpy()]

    def arr(name: str) -> np.ndarray:
        return post[name].transpose("sample", "indication").to_numpy()

    cyp = np.zeros((n, len(CYP2B6_CLASSES)))
    if spec.spec["cyp2b6"]:
        cyp[:, 1:] = post[f"{p}cyp2b6"].transpose("sample", "cyp2b6_class").to_numpy()
    b = {t["column"]: arr(f"{p}b_{t['name']}") for t in spec.terms() if t["name"] != "exposure"}
    return ResponseDraws(
        intercept=arr(f"{p}intercept"),
        b_exposure=arr(f"{p}b_exposure") if spec.exposure else None,
        b=b,
        cyp=cyp,
        centre={c: float(const[f"centre_{c.lower()}"]) for c in b},
        scale={c: float(const[f"scale_{c.lower()}"]) for c in b},
        exposure_centre=(
            dict(zip(inds, map(float, const["exposure_centre"].to_numpy()), strict=True))
            if spec.exposure
            else {}
        ),
        exposure_scale=float(const["exposure_scale"]) if spec.exposure else 1.0,
        indications=inds,
    )


def _baseline_logit(
    rd: ResponseDraws, patients: pd.DataFrame
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logit without the exposure term (sample, patient) and each factor's contribution."""
    g = patients["INDICATION"].map({k: i for i, k in enumerate(rd.indications)}).to_numpy(int)
    lin = rd.intercept[:, g].copy()
    parts = {}
    for col, b in rd.b.items():
        z = (patients[col].to_numpy(float) - rd.centre[col]) / rd.scale[col]
        parts[col] = b[:, g] * z[None, :]
        lin += parts[col]
    cls = patients["CYP2B6_CLASS"].fillna("NM").map(CYP2B6_CLASSES.index).to_numpy(int)
    parts["CYP2B6"] = rd.cyp[:, cls]
    lin += parts["CYP2B6"]
    return lin, parts


def _by_patient(x: np.ndarray) -> np.ndarray:
    """(sample, patient) draws as contiguous rows (patient, sample): each patient's statistics
    are then computed the same way (and to the same bits) whoever else is in the array."""
    return np.ascontiguousarray(np.asarray(x, float).T)


def _mcse_share(exceeded: np.ndarray, n_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of draws (patient, sample) above a limit and its Monte Carlo standard error over
    ``n_eff`` effective draws, at the Jeffreys estimate (k + 1/2) / (n + 1) so that 0 of n
    draws reads as the resolution of the draws, not as a certainty."""
    k, n = exceeded.sum(axis=1), exceeded.shape[1]
    share = k / n
    jeff = (k + 0.5) / (n + 1.0)
    return share, np.sqrt(jeff * (1.0 - jeff) / n_eff)


#: A regimen's description and its evaluation: shared by both tables.
REGIMEN_FIELDS = (
    "FAMILY",
    "REGIMEN",
    "FORMULATION",
    "DOSE_MG_KG",
    "RATE_MG_H",
    "DURATION_H",
    "SESSIONS",
    "INTERVAL_H",
    "AMOUNT_MG",
    "TOTAL_MG",
    "P_RESPONSE",
    "P_RESPONSE_LO",
    "P_RESPONSE_HI",
    "P_RESPONSE_MCSE",
    "EXPOSURE_MEDIAN",
    "EXPOSURE_LO",
    "EXPOSURE_HI",
    "PEAK_KET_MEDIAN",
    "PEAK_KET_LO",
    "PEAK_KET_HI",
    "CUM_AUC_KET_MEDIAN",
    "CUM_AUC_KET_LO",
    "CUM_AUC_KET_HI",
    "P_PEAK_EXCEEDED",
    "P_PEAK_EXCEEDED_MCSE",
    "P_CUM_EXCEEDED",
    "P_CUM_EXCEEDED_MCSE",
)

#: Columns of the per-candidate table (regimens.csv, with "patient" the row of the patient).
REGIMEN_COLUMNS = (
    "patient",
    "ID",
    "INDICATION",
    *REGIMEN_FIELDS,
    "EXPOSURE_LOGIT",
    "EXPOSURE_Z",
    "ACCEPTABLE",
    "P_RESPONSE_GAP_SE",
)


def evaluate_regimens(
    models: ReferenceFits,
    patients: pd.DataFrame,
    post: IndividualPosterior,
    grid: list[Regimen],
    dosing: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per (patient, regimen open to the patient): P(response), exposures with their
    intervals, P(limits) with their Monte Carlo errors (columns :data:`REGIMEN_COLUMNS`; no
    row for a patient no regimen is open to).

    ``P_RESPONSE_GAP_SE`` is the Monte Carlo standard error of the difference between the
    patient's best acceptable regimen's P(response) and this one's, paired over the draws the
    two share (NaN when no regimen is acceptable). Monte Carlo errors count
    ``min(draws, ESS)`` effective draws per patient.

    Also returns per patient (mean over draws) the logit contribution of each biomarker and of
    CYP2B6 against a typical patient, each biomarker's standardised value (``<COL>_Z``: its
    sign says high or low against the fit's centre) and ``TYPICAL_P``, the response
    probability of a typical patient of the indication at the trial's mean exposure.

    ``dosing`` is the config's section of that name (its ``safety`` limits and
    ``decision.prob``).
    """
    spec = models.pk_spec
    n_s = next(iter(post.params.values())).shape[0]
    rd = response_draws(models, n_s, np.random.default_rng(seed))
    base, parts = _baseline_logit(rd, patients)
    target = _exposure_target(models)
    safety, prob = dosing["safety"], dosing["decision"]["prob"]
    q = [(1 - prob) / 2, 0.5, (1 + prob) / 2]
    w_form = {
        f: np.array([DOSE_TARGETS[f].get(c, 0.0) for c in spec.chains])
        for f in {r.formulation for r in grid}
    }
    levels = sorted({0} | ({target[0]} if target else set()))
    frames: list[pd.DataFrame] = []
    p_draws: list[np.ndarray] = []
    wt = patients["WT"].to_numpy(float)
    n_eff = np.minimum(float(n_s), np.asarray(post.ess, float))
    ddof = 1 if n_s > 1 else 0
    for ind in sorted(set(patients["INDICATION"])):
        endpoint = models.endpoints[ind]
        regs = [r for r in grid if r.indication == ind]
        # One unit-infusion computation per (duration, interval), for the patients that any
        # of its regimens is open to.
        for (dur, step), shape_regs in _group(regs, lambda r: (r.duration_h, r.interval_h)):
            masks = [open_mask(r, patients) for r in shape_regs]
            pidx = np.flatnonzero(np.logical_or.reduce(masks))
            if not pidx.size:
                continue
            sub = {k: v[:, pidx, :] for k, v in post.params.items()}
            m_max = max(r.sessions for r in shape_regs)
            peak_t = dur + step * np.arange(m_max)
            per_n = auc_times(shape_regs, endpoint)
            auc_t = np.unique(np.concatenate([np.asarray(v) for v in per_n.values()]))
            peak1, auc1 = unit_infusion_curves(spec, sub, dur, peak_t, auc_t, levels)
            for reg, mask in zip(shape_regs, masks, strict=True):
                open_to = mask[pidx]
                if not open_to.any():
                    continue
                keep = np.flatnonzero(open_to)
                rows = pidx[keep]
                w = w_form[reg.formulation]
                amt = reg.amount_mg(wt[pidx])  # (patient,)
                n = reg.sessions
                # peak of total ketamine: the end of the last infusion
                peak = (peak1[..., :n].sum(-1) * w).sum(-1) * amt[None, :]
                idx = np.searchsorted(auc_t, per_n[n])

                cum = course_auc(auc1[0], idx, w, amt)
                lin = base[:, pidx]
                expo_logit = np.zeros_like(lin)
                expo = np.full_like(peak, np.nan)
                x = np.zeros_like(lin)
                if target is not None:
                    lev, wc = target
                    expo = course_auc(auc1[lev], idx, w * wc, amt)
                    g = rd.indications.index(ind)
                    with np.errstate(divide="ignore"):
                        x = (np.log(expo) - rd.exposure_centre[ind]) / rd.exposure_scale
                    # no exposure at all (e.g. arketamine for an S-chain metric): far below
                    x = np.where(np.isfinite(x), x, -50.0)
                    expo_logit = rd.b_exposure[:, [g]] * x
                p, peak, cum, expo, expo_logit, x = (
                    _by_patient(a[:, keep])
                    for a in (expit(lin + expo_logit), peak, cum, expo, expo_logit, x)
                )
                ne = n_eff[rows]
                p_peak, se_peak = _mcse_share(peak > safety["peak_ketamine_ng_ml"], ne)
                p_cum, se_cum = _mcse_share(cum > safety["cumulative_auc_ng_h_ml"], ne)
                pq, eq, kq, cq = (np.quantile(a, q, axis=1) for a in (p, expo, peak, cum))
                m = keep.size
                p_draws.append(p)
                frames.append(
                    pd.DataFrame(
                        {
                            "patient": rows,
                            "ID": patients["ID"].to_numpy()[rows],
                            "INDICATION": ind,
                            "FAMILY": reg.family,
                            "REGIMEN": reg.label,
                            "FORMULATION": reg.formulation,
                            "DOSE_MG_KG": np.full(
                                m, np.nan if reg.dose_mg_kg is None else reg.dose_mg_kg
                            ),
                            "RATE_MG_H": np.full(
                                m, np.nan if reg.rate_mg_h is None else reg.rate_mg_h
                            ),
                            "DURATION_H": reg.duration_h,
                            "SESSIONS": n,
                            "INTERVAL_H": reg.interval_h,
                            "AMOUNT_MG": amt[keep],
                            "TOTAL_MG": amt[keep] * n,
                            "P_RESPONSE": p.mean(axis=1),
                            "P_RESPONSE_LO": pq[0],
                            "P_RESPONSE_HI": pq[2],
                            "P_RESPONSE_MCSE": p.std(axis=1, ddof=ddof) / np.sqrt(ne),
                            "EXPOSURE_MEDIAN": eq[1],
                            "EXPOSURE_LO": eq[0],
                            "EXPOSURE_HI": eq[2],
                            "PEAK_KET_MEDIAN": kq[1],
                            "PEAK_KET_LO": kq[0],
                            "PEAK_KET_HI": kq[2],
                            "CUM_AUC_KET_MEDIAN": cq[1],
                            "CUM_AUC_KET_LO": cq[0],
                            "CUM_AUC_KET_HI": cq[2],
                            "P_PEAK_EXCEEDED": p_peak,
                            "P_PEAK_EXCEEDED_MCSE": se_peak,
                            "P_CUM_EXCEEDED": p_cum,
                            "P_CUM_EXCEEDED_MCSE": se_cum,
                            "EXPOSURE_LOGIT": expo_logit.mean(axis=1),
                            "EXPOSURE_Z": x.mean(axis=1),
                        }
                    )
                )
    contrib = {k: _by_patient(v).mean(axis=1) for k, v in parts.items()}
    for col in rd.b:
        contrib[f"{col}_Z"] = (patients[col].to_numpy(float) - rd.centre[col]) / rd.scale[col]
        contrib[f"{col}_MEAN"] = np.full(len(patients), rd.centre[col])
    g_all = patients["INDICATION"].map({k: i for i, k in enumerate(rd.indications)}).to_numpy(int)
    contrib["TYPICAL_P"] = _by_patient(expit(rd.intercept[:, g_all])).mean(axis=1)
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in REGIMEN_COLUMNS})
        return empty.astype({"patient": int, "ACCEPTABLE": bool}), contrib
    table = pd.concat(frames, ignore_index=True)
    draws = np.vstack(p_draws)  # (row, sample), aligned with the table
    table["ACCEPTABLE"] = (table["P_PEAK_EXCEEDED"] <= safety["peak_tolerated_probability"]) & (
        table["P_CUM_EXCEEDED"] <= safety["cumulative_tolerated_probability"]
    )
    order = [
        "patient",
        "FAMILY",
        "FORMULATION",
        "DURATION_H",
        "SESSIONS",
        "DOSE_MG_KG",
        "RATE_MG_H",
    ]
    perm = table.sort_values(order, kind="stable").index.to_numpy()
    table, draws = table.iloc[perm].reset_index(drop=True), draws[perm]
    # The paired Monte Carlo error of each candidate against the patient's best acceptable
    # regimen (the first of the highest in the table's order): what the tie rule reads.
    score = table["P_RESPONSE"].where(table["ACCEPTABLE"], -np.inf)
    best = table["patient"].map(score.groupby(table["patient"]).idxmax()).to_numpy()
    gap = draws[best] - draws
    se = gap.std(axis=1, ddof=ddof) / np.sqrt(n_eff[table["patient"].to_numpy()])
    has_ok = table.groupby("patient")["ACCEPTABLE"].transform("any").to_numpy()
    table["P_RESPONSE_GAP_SE"] = np.where(has_ok, se, np.nan)
    return table[list(REGIMEN_COLUMNS)], contrib


def _group(items: list[Regimen], key) -> list[tuple[Any, list[Regimen]]]:
    out: dict[Any, list[Regimen]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return list(out.items())
