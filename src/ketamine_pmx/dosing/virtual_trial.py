"""The virtual dosing trial: model-guided against standard dosing, scored on the truth.

New patients are drawn from the simulator and dosed by the fitted models and by their arm's
standard protocol (MDD 0.5 mg/kg over 40 min; the CRPS outpatient and inpatient titrations);
the workflow adds a third arm dosed by the simulator's own truth used as the models (the
oracle: what guidance achieves when the model is right). Each plan is scored on
the simulator's TRUE response probability and TRUE exceedance of the safety limits
(:func:`true_outcome`, by numerical integration of the simulator's ODEs), and
:func:`trial_summary` gives the response rate and exceedance by arm and strategy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from ketamine_pmx.dosing.decision import Recommendation, recommend
from ketamine_pmx.dosing.fits import ReferenceFits, make_models
from ketamine_pmx.dosing.regimens import Regimen
from ketamine_pmx.dosing.report import is_true

# --------------------------------------------------------------------------------------
# The virtual trial of model-guided dosing
# --------------------------------------------------------------------------------------

SETTING_OF_ARM = {"CRPS_OUT": "outpatient", "CRPS_IN": "inpatient"}


def true_outcome(
    params: dict[str, Any],
    arm: dict[str, Any],
    ind_pk: dict[str, float],
    doses: list[Any],
    rtol: float,
    atol: float,
) -> dict[str, float]:
    """The simulator's true exposures of one patient under a dose list (ODE reference)."""
    from ketamine_pmx.simulate.trial import PK_ANALYTES, integrate_pk, visit_times

    _, t_primary = visit_times(arm, doses)
    ends = np.array([d.end for d in doses])
    times = np.unique(np.concatenate([ends, [t_primary]]))
    sol = integrate_pk(ind_pk, doses, times, params["molar_mass_g_mol"], rtol, atol)
    at = {float(t): j for j, t in enumerate(sol.times)}
    ket = [PK_ANALYTES.index("S_KET"), PK_ANALYTES.index("R_KET")]
    hnk = [PK_ANALYTES.index(a) for a in params["response"]["exposure_analytes"]]
    end_rows = [at[float(t)] for t in ends]
    j = at[float(t_primary)]
    return {
        "AUC_HNK": float(sol.auc[j, hnk].sum()),
        "PEAK_KET": float(sol.conc[end_rows][:, ket].sum(axis=1).max()),
        "CUM_AUC_KET": float(sol.auc[j, ket].sum()),
        "TOTAL_MG": float(sum(d.amt for d in doses)),
    }


def virtual_trial(
    config: dict[str, Any], models: ReferenceFits, seed: int, population: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, Recommendation]:
    """New simulated patients dosed by the model and by their arm's standard protocol, scored
    on the simulator's TRUE response probability and TRUE safety-limit exceedance.

    ``population`` is the simulator's ``truth_population.json`` of the run (its parameters,
    with the run's truth overrides applied, and reference exposures), so the new patients
    come from the same truth as the trial the models were fitted to. Returns per-patient
    rows, a summary by arm and strategy, and the recommendation.
    """
    from ketamine_pmx.simulate.trial import (
        Dose,
        build_regimen,
        draw_pk_parameters,
        draw_subjects,
        response_linear_predictor,
    )

    cfg = config["dosing"]
    sim = config["simulation"]
    params = population["parameters"]
    rtol, atol = sim["ode"]["rtol"], sim["ode"]["atol"]
    rng_cov, rng_pk, rng_design = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    subjects = draw_subjects(params, cfg["trial"]["patients"], sim["population_mix"], rng_cov)
    ind_pk = draw_pk_parameters(params, subjects, rng_pk)
    auc_ref = population["reference_auc_hnk_ng_h_ml"]
    patients = pd.DataFrame(
        {
            "ID": subjects["ID"].astype(str),
            "INDICATION": subjects["INDICATION"].astype(str),
            "WT": subjects["WT"].astype(float),
            "AGE": subjects["AGE"].astype(float),
            "SEX": subjects["SEX"],
            "CYP2B6": subjects["CYP2B6_CLASS"],
            "CYP2B6_CLASS": subjects["CYP2B6_CLASS"],
            "DSER": subjects["DSER"].astype(float),
            "MG": subjects["MG"].astype(float),
            "SETTING": subjects["ARM"].map(SETTING_OF_ARM).fillna("outpatient"),
        }
    )
    rec = recommend(models, patients, cfg, seed)
    limits = cfg["safety"]
    rows = []
    for i, subj in subjects.iterrows():
        arm = params["arms"][subj["ARM"]]
        pk_i = ind_pk.iloc[i].to_dict()
        reg = arm["regimen"]
        n_days = int(rng_design.choice(reg["days"])) if "days" in reg else None
        standard = build_regimen(reg, float(subj["WT"]), n_days)
        r = rec.recommendations.iloc[i]
        strategies = {"standard": standard}
        if is_true(r["RECOMMENDED"]):
            target = r["FORMULATION"]
            strategies["guided"] = [
                Dose(t, a, rate, target)
                for t, a, rate in Regimen(
                    family="",
                    indication=r["INDICATION"],
                    setting=r["SETTING"],
                    formulation=target,
                    duration_h=float(r["DURATION_H"]),
                    sessions=int(r["SESSIONS"]),
                    interval_h=float(r["INTERVAL_H"]),
                    dose_mg_kg=None if pd.isna(r["DOSE_MG_KG"]) else float(r["DOSE_MG_KG"]),
                    rate_mg_h=None if pd.isna(r["RATE_MG_H"]) else float(r["RATE_MG_H"]),
                ).doses(float(subj["WT"]))
            ]
        for name, doses in strategies.items():
            tr = true_outcome(params, arm, pk_i, doses, rtol, atol)
            eta = response_linear_predictor(
                params,
                np.array([subj["INDICATION"]]),
                np.array([tr["AUC_HNK"]]),
                auc_ref,
                np.array([float(subj["DSER"])]),
                np.array([float(subj["MG"])]),
            )[0]
            rows.append(
                {
                    "ID": str(subj["ID"]),
                    "ARM": subj["ARM"],
                    "INDICATION": subj["INDICATION"],
                    "CYP2B6_CLASS": subj["CYP2B6_CLASS"],
                    "STRATEGY": name,
                    "REGIMEN": r["REGIMEN"] if name == "guided" else "standard protocol",
                    **tr,
                    "TRUE_P_RESPONSE": float(expit(eta)),
                    "TRUE_PEAK_EXCEEDED": tr["PEAK_KET"] > limits["peak_ketamine_ng_ml"],
                    "TRUE_CUM_EXCEEDED": tr["CUM_AUC_KET"] > limits["cumulative_auc_ng_h_ml"],
                    "PREDICTED_P_RESPONSE": r["P_RESPONSE"] if name == "guided" else np.nan,
                    "FLAGGED": is_true(r["LIKELY_NON_RESPONDER"]),
                }
            )
        if not is_true(r["RECOMMENDED"]):  # not treated under model guidance
            rows.append(
                {
                    "ID": str(subj["ID"]),
                    "ARM": subj["ARM"],
                    "INDICATION": subj["INDICATION"],
                    "CYP2B6_CLASS": subj["CYP2B6_CLASS"],
                    "STRATEGY": "guided",
                    "REGIMEN": f"not treated ({r['STATUS']})",
                    "AUC_HNK": 0.0,
                    "PEAK_KET": 0.0,
                    "CUM_AUC_KET": 0.0,
                    "TOTAL_MG": 0.0,
                    "TRUE_P_RESPONSE": 0.0,
                    "TRUE_PEAK_EXCEEDED": False,
                    "TRUE_CUM_EXCEEDED": False,
                    "PREDICTED_P_RESPONSE": np.nan,
                    "FLAGGED": is_true(r["LIKELY_NON_RESPONDER"]),
                }
            )
    per_patient = pd.DataFrame(rows)
    return per_patient, trial_summary(per_patient), rec


#: The STRATEGY of the guided arm dosed with the simulator's truth as the models.
ORACLE_STRATEGY = "guided (true model)"


def oracle_fits(models: ReferenceFits, population: dict[str, Any], draws: int) -> ReferenceFits:
    """The simulator's truth (``truth_population.json``) as reference fits of the same specs,
    ``draws`` draws each. Raises ``ValueError`` for a reference model the oracle cannot express
    (see :mod:`ketamine_pmx.simulate.oracle`)."""
    from ketamine_pmx.simulate.oracle import oracle_pk_posterior, oracle_response

    return make_models(
        models.pk_spec,
        oracle_pk_posterior(population, models.pk_spec, draws),
        models.resp_spec,
        *oracle_response(population, models.resp_spec, draws),
        models.endpoints,
    )


def trial_with_true_model(
    config: dict[str, Any], models: ReferenceFits, seed: int, population: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """:func:`virtual_trial` of the fitted models (``MODELS`` ``fitted``), and the same
    patients dosed with the simulator's own truth as the models (:func:`oracle_fits`, with
    ``dosing.pk_draws`` draws): their guided arm only, as STRATEGY :data:`ORACLE_STRATEGY` and
    ``MODELS`` ``oracle``. That arm is what guidance achieves when the model is exactly right,
    the bound the fitted models are measured against.

    Returns the per-patient rows and the summary of both, and why the true-model arm is
    missing (``None`` when it is there: the oracle cannot express every reference model).
    """
    per_patient, summary, _ = virtual_trial(config, models, seed, population)
    tables, summaries = [per_patient.assign(MODELS="fitted")], [summary]
    try:
        oracle = oracle_fits(models, population, config["dosing"]["pk_draws"])
    except ValueError as exc:
        skipped: str | None = f"no true-model arm: {exc}"
    else:
        skipped = None
        per_oracle, summary_oracle, _ = virtual_trial(config, oracle, seed, population)
        keep = per_oracle["STRATEGY"] == "guided"
        tables.append(per_oracle[keep].assign(MODELS="oracle", STRATEGY=ORACLE_STRATEGY))
        guided = summary_oracle[summary_oracle["STRATEGY"] == "guided"]
        summaries.append(guided.assign(STRATEGY=ORACLE_STRATEGY))
    return (
        pd.concat(tables, ignore_index=True),
        pd.concat(summaries, ignore_index=True),
        skipped,
    )


def trial_summary(per_patient: pd.DataFrame) -> pd.DataFrame:
    """True response rate and exceedance by arm (and overall) and strategy; flagged patients."""
    out = []
    groups = [("all", per_patient), *per_patient.groupby("ARM", sort=True)]
    for arm, g in groups:
        for strat, s in g.groupby("STRATEGY", sort=False):
            flagged = s[s["FLAGGED"]]
            out.append(
                {
                    "ARM": arm,
                    "STRATEGY": strat,
                    "PATIENTS": len(s),
                    "TRUE_RESPONSE_RATE": s["TRUE_P_RESPONSE"].mean(),
                    "TRUE_PEAK_EXCEEDED": s["TRUE_PEAK_EXCEEDED"].mean(),
                    "TRUE_CUM_EXCEEDED": s["TRUE_CUM_EXCEEDED"].mean(),
                    "TRUE_ANY_EXCEEDED": (s["TRUE_PEAK_EXCEEDED"] | s["TRUE_CUM_EXCEEDED"]).mean(),
                    "MEAN_TOTAL_MG": s["TOTAL_MG"].mean(),
                    "FLAGGED_SHARE": len(flagged) / len(s) if len(s) else np.nan,
                    "FLAGGED_TRUE_RESPONSE_RATE": flagged["TRUE_P_RESPONSE"].mean()
                    if len(flagged)
                    else np.nan,
                    "UNFLAGGED_TRUE_RESPONSE_RATE": s.loc[~s["FLAGGED"], "TRUE_P_RESPONSE"].mean(),
                }
            )
    return pd.DataFrame(out)
