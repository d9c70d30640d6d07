"""Individualised dosing: exposures of candidate regimens against the simulator's ODE
solution, the response linkage against the simulator's truth, the fast individual posterior
against per-patient NUTS, the decision rule, refusals of bad input, and the virtual trial."""

from __future__ import annotations

import dataclasses
import shutil
import types

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_config, save_run_posteriors, true_parameters

from ketamine_pmx import dosing
from ketamine_pmx.cli import main as cli_main
from ketamine_pmx.config import ConfigError, deep_merge
from ketamine_pmx.data import DataValidationError, load_concentrations, load_patients
from ketamine_pmx.models import load_pk_spec, load_response_spec
from ketamine_pmx.simulate import (
    Dose,
    apply_truth_overrides,
    load_parameters,
    oracle_pk_posterior,
    oracle_response,
    response_linear_predictor,
    simulate_trial,
)

PK_SPEC = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
RESP_SPEC = load_response_spec(REPO / "models" / "response_full.yaml")


@pytest.fixture(scope="module")
def world():
    config = make_config()
    sim = simulate_trial(config)
    pop = sim.population
    models = dosing.make_models(
        PK_SPEC,
        oracle_pk_posterior(pop, PK_SPEC, 400, jitter=0.02, seed=1),
        RESP_SPEC,
        *oracle_response(pop, RESP_SPEC, 400),
        config["response"]["endpoints"],
    )
    return config, sim, models


def _cfg(config, **changes):
    return deep_merge(config["dosing"], changes)


def test_regimen_exposures_and_response_match_the_simulator(world):
    """Superposed unit infusions (exact solution) give the ODE's peak, course AUC and HNK
    AUC, and with the oracle response model P(response) is the simulator's true one."""
    config, sim, models = world
    subj = sim.subjects.iloc[[0, 1]].reset_index(drop=True)
    ids = subj["ID"].to_numpy()
    params = true_parameters(sim.subjects, types.SimpleNamespace(subjects=ids))
    patients = pd.DataFrame(
        {
            "ID": ids.astype(str),
            "INDICATION": ["MDD", "CRPS"],
            "WT": subj["WT"].to_numpy(float),
            "CYP2B6_CLASS": subj["CYP2B6_CLASS"].to_numpy(),
            "DSER": subj["DSER"].to_numpy(float),
            "MG": subj["MG"].to_numpy(float),
            "SETTING": ["outpatient", "outpatient"],
        }
    )
    cfg = _cfg(
        config,
        regimens=[
            {
                "indication": "MDD",
                "formulations": ["KET", "S_KET"],
                "dose_mg_kg": [0.5],
                "duration_h": [0.6667],
            },
            {
                "indication": "CRPS",
                "formulations": ["KET"],
                "rate_mg_h": [10.0],
                "hours_per_day": [4.0],
                "sessions": [3],
            },
        ],
    )
    post = dosing.IndividualPosterior(
        {k: v[None] for k, v in params.items()}, ["x"] * 2, np.ones(2)
    )
    grid = dosing.regimen_grid(cfg)
    table, _ = dosing.evaluate_regimens(models, patients, post, grid, cfg, seed=0)
    assert len(table) == 3
    pars = apply_truth_overrides(
        load_parameters(config["simulation"]["parameters"]), config["simulation"]["truth"]
    )
    arms = {"MDD": pars["arms"]["MDD"], "CRPS": pars["arms"]["CRPS_OUT"]}
    truth_cols = [c for c in sim.subjects.columns if c[:2] in ("S_", "R_")]
    for _, row in table.iterrows():
        k = int(np.flatnonzero(patients["ID"] == row["ID"])[0])
        ind_pk = sim.subjects.iloc[k][truth_cols].to_dict()
        amt = row["AMOUNT_MG"]
        doses = [
            Dose(j * row["INTERVAL_H"], amt, amt / row["DURATION_H"], row["FORMULATION"])
            for j in range(int(row["SESSIONS"]))
        ]
        tr = dosing.true_outcome(pars, arms[row["INDICATION"]], ind_pk, doses, 1e-10, 1e-12)
        np.testing.assert_allclose(row["PEAK_KET_MEDIAN"], tr["PEAK_KET"], rtol=1e-5)
        np.testing.assert_allclose(row["CUM_AUC_KET_MEDIAN"], tr["CUM_AUC_KET"], rtol=1e-5)
        np.testing.assert_allclose(row["EXPOSURE_MEDIAN"], tr["AUC_HNK"], rtol=1e-5)
        eta = response_linear_predictor(
            pars,
            np.array([row["INDICATION"]]),
            np.array([tr["AUC_HNK"]]),
            sim.population["reference_auc_hnk_ng_h_ml"],
            np.array([patients.at[k, "DSER"]]),
            np.array([patients.at[k, "MG"]]),
        )
        np.testing.assert_allclose(row["P_RESPONSE"], 1 / (1 + np.exp(-eta[0])), rtol=1e-5)


def example_patients(config, models):
    """The example patients file, checked against the models' needs."""
    return load_patients(
        REPO / "data" / "new_patients.csv",
        models.needed_covariates(),
        models.indications,
        config["dosing"],
        config["data"],
    )


def _patients_and_conc(world, ids):
    config, _, models = world
    patients = example_patients(config, models)
    conc = load_concentrations(
        REPO / "data" / "new_patients_concentrations.csv", patients, config["data"]
    )
    keep = patients["ID"].isin(ids)
    return patients[keep].reset_index(drop=True), conc[conc["ID"].isin(ids)]


def _log_draws(post: dosing.IndividualPosterior, k: int) -> dict[str, np.ndarray]:
    return {
        f"{n}[{c}]": np.log(v[:, k, c])
        for n, v in post.params.items()
        for c in range(v.shape[-1])
        if np.ptp(v[:, k, c]) > 0
    }


def test_fast_posterior_agrees_with_per_patient_nuts(world):
    """With measured concentrations (Laplace importance sampling) and without (population
    draws), the fast method's draws match per-patient NUTS of the same posterior."""
    config, _, models = world
    cfg = _cfg(config, pk_draws=400, proposals=4000, nuts={"draws": 400, "tune": 400})
    patients, conc = _patients_and_conc(world, ["MDD-03"])
    fast = dosing.individual_posterior(models, patients, conc, cfg, seed=3, force="importance")
    slow = dosing.individual_posterior(models, patients, conc, cfg, seed=3, force="nuts")
    assert fast.method == ["importance"] and slow.method == ["nuts"]
    assert fast.ess[0] > cfg["min_ess"]
    a, b = _log_draws(fast, 0), _log_draws(slow, 0)
    prior = _log_draws(dosing.individual_posterior(models, patients, None, cfg, seed=3), 0)
    shrunk = 0
    for name in b:
        sd = b[name].std()
        assert abs(a[name].mean() - b[name].mean()) < 0.25 * sd + 0.02, name
        assert 0.7 < a[name].std() / sd < 1.4, name
        shrunk += sd < 0.7 * prior[name].std()
    assert shrunk >= 4  # the test dose is informative: the posterior is not the prior
    grid = dosing.regimen_grid(cfg)
    t_fast, _ = dosing.evaluate_regimens(models, patients, fast, grid, cfg, seed=0)
    t_slow, _ = dosing.evaluate_regimens(models, patients, slow, grid, cfg, seed=0)
    assert np.abs(t_fast["P_RESPONSE"] - t_slow["P_RESPONSE"]).max() < 0.04
    assert np.abs(np.log(t_fast["PEAK_KET_MEDIAN"] / t_slow["PEAK_KET_MEDIAN"])).max() < 0.1

    # Without concentrations: population draws vs NUTS of the moment-matched prior.
    pop = dosing.individual_posterior(models, patients, None, cfg, seed=4)
    wt, cyp = patients["WT"].to_numpy(float), patients["CYP2B6_CLASS"].to_numpy(str)
    prop, prop_post = dosing.population_draws(models, wt, cyp, 4000, np.random.default_rng(5))
    target = dosing.PatientTarget(models, None, prop, prop_post)
    theta, div = dosing.nuts_patient(target, 400, cfg["nuts"], seed=6)
    assert div == 0
    nuts_params = target.params(theta)
    for name, v in pop.params.items():
        for c in range(v.shape[-1]):
            x, y = np.log(v[:, 0, c]), np.log(nuts_params[name][:, 0, c])
            if np.ptp(x) == 0:
                continue
            assert abs(x.mean() - y.mean()) < 0.2 * x.std() + 0.01, (name, c)
            assert 0.75 < y.std() / x.std() < 1.33, (name, c)


DECISION = {"margin": 0.03, "tie_mcse": 2.0, "min_p_response": 0.3}
SAFETY = {
    "peak_ketamine_ng_ml": 400,
    "peak_tolerated_probability": 0.1,
    "cumulative_auc_ng_h_ml": 25000,
    "cumulative_tolerated_probability": 0.1,
}


def test_decision_rule():
    rows = []
    specs = [  # (patient, regimen, P(response), P(peak), P(cum), cumulative AUC)
        (0, "a", 0.70, 0.00, 0.00, 1000.0),
        (0, "b", 0.72, 0.00, 0.00, 3000.0),  # within the margin of the best: costlier
        (0, "c", 0.90, 0.50, 0.00, 9000.0),  # best, but unsafe
        (1, "a", 0.20, 0.00, 0.00, 500.0),  # best acceptable below the threshold
        (1, "b", 0.60, 0.00, 0.80, 5000.0),
        (2, "a", 0.90, 0.30, 0.00, 500.0),  # nothing acceptable
    ]
    for i, reg, p, pp, pc, cum in specs:
        rows.append(
            {
                "patient": i,
                "ID": f"P{i}",
                "REGIMEN": reg,
                "P_RESPONSE": p,
                "P_PEAK_EXCEEDED": pp,
                "P_CUM_EXCEEDED": pc,
                "CUM_AUC_KET_MEDIAN": cum,
                "TOTAL_MG": cum / 10,
                "EXPOSURE_LOGIT": -1.0 if i == 1 else 0.0,
                "EXPOSURE_Z": -0.8 if i == 1 else 0.0,
                "P_RESPONSE_GAP_SE": 0.0,
            }
        )
    table = pd.DataFrame(rows)
    table["ACCEPTABLE"] = (table["P_PEAK_EXCEEDED"] <= 0.1) & (table["P_CUM_EXCEEDED"] <= 0.1)
    patients = pd.DataFrame(
        {
            "ID": ["P0", "P1", "P2"],
            "INDICATION": "MDD",
            "SETTING": "outpatient",
            "CYP2B6_CLASS": ["NM", "PM", "NM"],
            "DSER": 4.0,
            "MG": 0.85,
        }
    )
    post = dosing.IndividualPosterior({}, ["population"] * 3, np.full(3, 200.0))
    cfg = {"decision": DECISION, "safety": SAFETY}
    contrib = {"DSER": np.zeros(3), "MG": np.zeros(3), "CYP2B6": np.zeros(3)}
    rec = dosing.decide(table, patients, contrib, post, cfg, "AUC_HNK").set_index("ID")
    assert rec.loc["P0", "REGIMEN"] == "a" and not rec.loc["P0", "LIKELY_NON_RESPONDER"]
    assert rec.loc["P1", "REGIMEN"] == "a" and rec.loc["P1", "LIKELY_NON_RESPONDER"]
    assert rec.loc["P1", "DRIVER"].startswith("low predicted HNK exposure; CYP2B6 PM")
    assert not rec.loc["P2", "RECOMMENDED"] and rec.loc["P2", "STATUS"] == dosing.STATUS_SAFETY
    assert "tolerated 0.1" in rec.loc["P2", "REASON"]


def test_ties_within_monte_carlo_error_go_to_the_lower_exposure():
    """A P(response) difference within tie_mcse Monte Carlo SEs of the paired difference is a
    tie (lower cumulative exposure wins), one beyond it is not, and exact ties fall to the
    grid's order."""
    specs = [  # (patient, regimen, P(response), SE of the gap to the best, cumulative AUC)
        (0, "cheap", 0.70, 0.02, 1000.0),  # 0.03 below the best, within 2 x 0.02: a tie
        (0, "best", 0.73, 0.00, 3000.0),
        (1, "cheap", 0.70, 0.005, 1000.0),  # 0.03 below, beyond 2 x 0.005: worse
        (1, "best", 0.73, 0.00, 3000.0),
        (2, "first", 0.50, 0.00, 1000.0),  # identical in every criterion: grid order
        (2, "second", 0.50, 0.00, 1000.0),
    ]
    table = pd.DataFrame(
        [
            {
                "patient": i,
                "ID": f"P{i}",
                "REGIMEN": reg,
                "P_RESPONSE": p,
                "P_RESPONSE_GAP_SE": se,
                "P_PEAK_EXCEEDED": 0.0,
                "P_CUM_EXCEEDED": 0.0,
                "CUM_AUC_KET_MEDIAN": cum,
                "TOTAL_MG": 50.0,
                "EXPOSURE_LOGIT": 0.0,
                "EXPOSURE_Z": 0.0,
                "ACCEPTABLE": True,
            }
            for i, reg, p, se, cum in specs
        ]
    )
    patients = pd.DataFrame(
        {"ID": ["P0", "P1", "P2"], "INDICATION": "MDD", "SETTING": "outpatient"}
    ).assign(CYP2B6_CLASS="NM", DSER=4.0, MG=0.85)
    post = dosing.IndividualPosterior({}, ["population"] * 3, np.full(3, 200.0))
    cfg = {"decision": {**DECISION, "margin": 0.0}, "safety": SAFETY}
    zero = {"DSER": np.zeros(3), "MG": np.zeros(3), "CYP2B6": np.zeros(3)}
    rec = dosing.decide(table, patients, zero, post, cfg, "AUC_HNK").set_index("ID")
    assert rec["REGIMEN"].to_dict() == {"P0": "cheap", "P1": "best", "P2": "first"}
    assert rec["N_TIED"].to_dict() == {"P0": 2, "P1": 1, "P2": 2}


def _cohort(world, rows):
    """Patients (the example file's rows, in the given order, with any renamed copies:
    (new ID, source ID)) and the concentration rows of those with a test dose."""
    patients, conc = _patients_and_conc(world, [src for _, src in rows])
    by_id = patients.set_index("ID", drop=False)
    out, c = [], []
    for new, src in rows:
        out.append(by_id.loc[src].copy().rename(None).to_dict() | {"ID": new})
        c.append(conc[conc["ID"] == src].assign(ID=new))
    return pd.DataFrame(out), pd.concat(c, ignore_index=True)


def test_plan_depends_only_on_the_patient_and_the_seed(world):
    """Common random numbers: each patient's rows of both tables are bit-identical whether
    the patient is alone, in a shuffled file, in any batch of a split, or a copy of another
    patient under a new ID (with and without a test dose)."""
    config, _, models = world
    cfg = _cfg(config, pk_draws=60, proposals=600)
    ids = ["MDD-01", "MDD-02", "MDD-03", "MDD-05", "CRPS-02", "CRPS-04"]
    pats, conc = _cohort(world, [(i, i) for i in ids])

    def run(patients, concentrations):
        res = dosing.recommend(models, patients, cfg, 7, concentrations)
        key = ["ID", "FAMILY", "REGIMEN"]
        return (
            res.recommendations.set_index("ID"),
            res.regimens.sort_values(key).set_index(key),
        )

    ref_rec, ref_reg = run(pats, conc)
    assert set(ref_rec["METHOD"]) == {"population", "importance"}

    def same(got, renamed=None):
        rec, reg = got
        for new, src in (renamed or {i: i for i in rec.index}).items():
            pd.testing.assert_series_equal(
                rec.loc[new], ref_rec.loc[src], check_exact=True, check_names=False
            )
            pd.testing.assert_frame_equal(reg.loc[new], ref_reg.loc[src], check_exact=True)

    shuffled = pats.iloc[np.random.default_rng(0).permutation(len(pats))]
    same(run(shuffled.reset_index(drop=True), conc))
    for k in range(3):
        part = dosing.patient_batch(pats, k, 3)
        same(run(part, conc[conc["ID"].isin(part["ID"])]))
    same(run(*_cohort(world, [("MDD-03", "MDD-03")])))
    copies = [("MDD-05", "MDD-05"), ("COPY-A", "MDD-01"), ("COPY-B", "MDD-03"), ("X", "MDD-01")]
    same(run(*_cohort(world, copies)), dict(copies))


def _shifted(models, **shift):
    """The models with response-posterior variables shifted (e.g. a coefficient's sign
    flipped by scale=-1, or the intercept lowered)."""
    post = models.resp_posterior.copy(deep=True)
    for name, (scale, add) in shift.items():
        values = post[name].values  # the copy's own array
        values *= scale
        values += add
    return dataclasses.replace(models, resp_posterior=post)


def test_drivers_follow_the_fitted_sign_and_flags_always_name_one(world):
    """The driver calls a value high or low against the fitted trial's mean and names it only
    when the fitted coefficient makes it lower the response; a flagged patient whose
    covariates lower nothing is told what does."""
    config, _, models = world
    cfg = _cfg(config, pk_draws=60)
    const = models.resp_const
    mean_mg, sd_mg = float(const["centre_mg"]), float(const["scale_mg"])
    patients = pd.DataFrame(
        {
            "ID": ["HIGH-MG", "TYPICAL"],
            "INDICATION": "MDD",
            "SETTING": "outpatient",
            "WT": 70.0,
            "CYP2B6_CLASS": "NM",
            "DSER": float(const["centre_dser"]),
            "MG": [mean_mg + 2.5 * sd_mg, mean_mg],
        }
    )
    flipped = _shifted(models, b_mg=(-1.0, 0.0))
    rec = dosing.recommend(flipped, patients, cfg, 3).recommendations.set_index("ID")
    assert rec.loc["HIGH-MG", "DRIVER"].startswith(f"high Mg ({mean_mg + 2.5 * sd_mg:.3g}")
    # with the fitted (positive) sign a high Mg helps: it is not a reason
    rec = dosing.recommend(models, patients, cfg, 3).recommendations.set_index("ID")
    assert "Mg" not in rec.loc["HIGH-MG", "DRIVER"]
    # an indication where nobody responds: the typical patient is flagged with a true reason
    hopeless = _shifted(models, intercept=(1.0, -6.0))
    rec = dosing.recommend(hopeless, patients, cfg, 3).recommendations.set_index("ID")
    typical = rec.loc["TYPICAL"]
    assert typical["LIKELY_NON_RESPONDER"] and not typical["DRIVER"].startswith("none")
    assert (
        "no single factor" in typical["DRIVER"] and "typical MDD patient 0.0" in typical["DRIVER"]
    )


def test_no_regimen_within_caps_or_limits_is_a_row_not_an_abort(world, tmp_path):
    """A patient whose caps lie below every candidate gets a row saying so and the others are
    recommended; with safety limits nothing meets, each patient's row says that."""
    config, _, models = world
    cfg = _cfg(config, pk_draws=40)
    path = tmp_path / "patients.csv"
    path.write_text(
        GOOD
        + "LOW-DOSE,MDD,outpatient,70,40,F,*1/*1,4,0.9,0.05,\n"
        + "OK,MDD,outpatient,70,40,F,*1/*1,4,0.9,,\n"
        + "LOW-RATE,CRPS,outpatient,70,40,F,*1/*1,4,0.9,,2\n"
    )
    patients = load_patients(
        path, models.needed_covariates(), models.indications, cfg, config["data"]
    )
    rec = dosing.recommend(models, patients, cfg, 1).recommendations.set_index("ID")
    for pid, why in (("LOW-DOSE", "MAX_DOSE_MG_KG 0.05"), ("LOW-RATE", "MAX_RATE_MG_H 2")):
        row = rec.loc[pid]
        assert row["STATUS"] == "no regimen within the patient's caps", row
        assert why in row["REASON"] and not row["RECOMMENDED"]
        assert pd.isna(row["REGIMEN"]) and pd.isna(row["P_RESPONSE"])
    assert rec.loc["OK", "STATUS"] == "recommended" and rec.loc["OK", "P_RESPONSE"] > 0
    alone = dosing.recommend(models, patients.iloc[[0]], cfg, 1).recommendations
    assert alone["STATUS"].tolist() == ["no regimen within the patient's caps"]
    strict = _cfg(config, pk_draws=40, safety={"peak_ketamine_ng_ml": 1.0})
    rec = dosing.recommend(models, patients.iloc[[1]], strict, 1).recommendations.iloc[0]
    assert rec["STATUS"] == "no regimen within the safety limits" and not rec["RECOMMENDED"]
    assert "P(peak > 1 ng/mL) 1.00" in rec["REASON"] and not rec["LIKELY_NON_RESPONDER"]


def test_every_exposure_has_its_interval_and_every_share_its_error(world):
    """Peak, course AUC and the response model's AUC come with the decision.prob interval of
    the patient's draws (checked against the draws evaluated one at a time), and each
    probability with its Monte Carlo error; the recommendation carries its regimen's."""
    config, _, models = world
    cfg = _cfg(config, pk_draws=40)
    patients, _ = _patients_and_conc(world, ["MDD-02"])
    post = dosing.individual_posterior(models, patients, None, cfg, seed=2)
    grid = [r for r in dosing.regimen_grid(cfg) if r.indication == "MDD"][:4]
    table, _ = dosing.evaluate_regimens(models, patients, post, grid, cfg, seed=0)
    one_each = dosing.IndividualPosterior(
        {k: np.moveaxis(v, 0, 1) for k, v in post.params.items()}, ["x"] * 40, np.ones(40)
    )
    many = patients.loc[np.zeros(40, int)].reset_index(drop=True)
    per_draw, _ = dosing.evaluate_regimens(models, many, one_each, grid, cfg, seed=0)
    for col in ("PEAK_KET", "CUM_AUC_KET", "EXPOSURE"):
        for reg, rows in per_draw.groupby("REGIMEN"):
            row = table.set_index("REGIMEN").loc[reg]
            lo, med, hi = np.quantile(rows[f"{col}_MEDIAN"], [0.05, 0.5, 0.95])
            np.testing.assert_allclose(
                row[[f"{col}_LO", f"{col}_MEDIAN", f"{col}_HI"]].to_numpy(float), [lo, med, hi]
            )
            assert lo < hi
    assert (table["P_RESPONSE_MCSE"] > 0).all()
    assert (table[["P_PEAK_EXCEEDED_MCSE", "P_CUM_EXCEEDED_MCSE"]] > 0).all().all()
    res = dosing.recommend(models, patients, cfg, 2)
    chosen = res.regimens.set_index("REGIMEN").loc[res.recommendations.at[0, "REGIMEN"]]
    for col in (
        "PEAK_KET_LO",
        "PEAK_KET_HI",
        "CUM_AUC_KET_LO",
        "CUM_AUC_KET_HI",
        "P_PEAK_EXCEEDED_MCSE",
    ):
        assert res.recommendations.at[0, col] == chosen[col]


def test_regimen_grid_refuses_unsafe_families(world):
    config, _, _ = world
    bad = _cfg(
        config,
        regimens=[
            {
                "indication": "CRPS",
                "setting": "outpatient",
                "formulations": ["KET"],
                "rate_mg_h": [10, 30],
                "hours_per_day": [4],
            }
        ],
    )
    with pytest.raises(
        ConfigError, match=r"regimens\[0\].rate_mg_h: \[30\] above the hard maximum 20"
    ):
        dosing.regimen_grid(bad)
    bad = _cfg(
        config, regimens=[{"indication": "MDD", "formulations": ["KET"], "dose_mg_kg": [0.5]}]
    )
    with pytest.raises(ConfigError, match="give dose_mg_kg with duration_h"):
        dosing.regimen_grid(bad)


GOOD = "ID,INDICATION,SETTING,WT,AGE,SEX,CYP2B6,DSER,MG,MAX_DOSE_MG_KG,MAX_RATE_MG_H\n"


@pytest.mark.parametrize(
    ("rows", "rule", "line"),
    [
        ("A,MDD,outpatient,70,40,F,*1/*1,,0.9,,\n", "covariate-missing", "line 2, column DSER"),
        (
            "A,MDD,outpatient,70,40,F,*1/*1,4,0.9,,\nB,MDD,outpatient,500,40,F,*1/*1,4,0.9,,\n",
            "covariate-range",
            "line 3, column WT",
        ),
        ("A,PTSD,outpatient,70,40,F,*1/*1,4,0.9,,\n", "indication-unknown", "line 2"),
        ("A,MDD,outpatient,70,40,F,*2/*2,4,0.9,,\n", "cyp2b6-unknown", "line 2"),
        ("A,MDD,outpatient,seventy,40,F,*1/*1,4,0.9,,\n", "not-a-number", "line 2, column WT"),
        ("A,CRPS,outpatient,70,40,F,*1/*1,4,0.9,,35\n", "rate-cap", "line 2"),
        ("A,MDD,outpatient,70,40,F,*1/*1,4,0.9,-0.5,\n", "dose-cap", "line 2"),
        (
            "A,MDD,outpatient,70,40,F,*1/*1,4,0.9,,\nA,MDD,ward,70,40,F,*1/*1,4,0.9,,\n",
            "setting-unknown",
            "line 3",
        ),
    ],
)
def test_bad_patient_files_are_refused_by_row(world, tmp_path, rows, rule, line):
    config, _, models = world
    path = tmp_path / "patients.csv"
    path.write_text(GOOD + rows)
    with pytest.raises(DataValidationError) as err:
        load_patients(
            path, models.needed_covariates(), models.indications, config["dosing"], config["data"]
        )
    assert f"[{rule}]" in str(err.value) and line in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (lambda t: t.replace("MDD-03,0.0,1,", "MDD-03,0.0,7,", 1), "evid-unknown"),
        (lambda t: t.replace("MDD-03,1.0,0,,,S_KET,", "MDD-03,1.0,0,,,S_KETX,", 1), "analyte"),
        (lambda t: t.replace("MDD-03,", "MDD-99,", 1), "id-unknown"),
        (lambda t: t.replace("MDD-03,2.0,", "MDD-03,-2.0,", 1), "time-invalid"),
    ],
)
def test_malformed_concentration_rows_are_refused(world, tmp_path, edit, rule):
    config, _, models = world
    patients = example_patients(config, models)
    text = (REPO / "data" / "new_patients_concentrations.csv").read_text()
    path = tmp_path / "conc.csv"
    path.write_text(edit(text))
    with pytest.raises(DataValidationError) as err:
        load_concentrations(path, patients, config["data"])
    msg = str(err.value)
    assert rule in msg and "line" in msg, msg


def test_virtual_trial_with_the_true_model(world):
    """Guided by the true model, dosing is at least as effective as the standard protocols,
    exceeds the safety limits less, and flags patients whose true response rate is low."""
    config, _, models = world
    cfg = deep_merge(
        config, {"dosing": {"trial": {"patients": {"MDD": 30, "CRPS_OUT": 15, "CRPS_IN": 15}}}}
    )
    per, summary, rec = dosing.virtual_trial(cfg, models, seed=11, population=world[1].population)
    s = summary.set_index(["ARM", "STRATEGY"])
    assert (
        s.loc[("all", "guided"), "TRUE_ANY_EXCEEDED"]
        <= s.loc[("all", "standard"), "TRUE_ANY_EXCEEDED"]
    )
    assert (
        s.loc[("MDD", "guided"), "TRUE_RESPONSE_RATE"]
        > s.loc[("MDD", "standard"), "TRUE_RESPONSE_RATE"]
    )
    assert s.loc[("all", "guided"), "PATIENTS"] == 60
    guided = per[per["STRATEGY"] == "guided"]
    flags = rec.recommendations["LIKELY_NON_RESPONDER"].map(dosing.is_true)
    assert guided["FLAGGED"].sum() == flags.sum()  # the trial counts the decision's flags
    assert s.loc[("all", "guided"), "FLAGGED_SHARE"] == pytest.approx(flags.mean())
    if guided["FLAGGED"].any():
        assert (
            guided.loc[guided["FLAGGED"], "TRUE_P_RESPONSE"].mean()
            < guided.loc[~guided["FLAGGED"], "TRUE_P_RESPONSE"].mean()
        )


def test_cli_recommend(world, tmp_path, capsys):
    """``ketamine-pmx recommend`` on a run directory: outputs per patient; bad input exits 1."""
    _, _, models = world
    run = tmp_path / "results"
    save_run_posteriors(models, run)
    models_dir = tmp_path / "models"
    shutil.copytree(REPO / "models", models_dir)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        f"models: {{dir: {models_dir}, pk: [pk_2cmt_metab], response: [response_full]}}\n"
        "dosing: {pk_draws: 50, proposals: 500}\n"
    )
    patients = REPO / "data" / "new_patients.csv"
    conc = REPO / "data" / "new_patients_concentrations.csv"
    out = tmp_path / "out"
    code = cli_main(
        [
            "recommend",
            "--patients",
            str(patients),
            "--run",
            str(run),
            "--out",
            str(out),
            "--config",
            str(cfg_path),
            "--concentrations",
            str(conc),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rec = dosing.read_table(out / "recommendations.csv")
    assert len(rec) == 12 and set(rec.loc[rec["ID"].isin(["MDD-03", "CRPS-02"]), "METHOD"]) == {
        "importance"
    }
    assert (out / "patients" / "MDD-01.png").is_file()
    assert "not medical advice" in (out / "patients" / "MDD-01.md").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD + "A,MDD,outpatient,70,40,F,*1/*1,,0.9,,\n")
    code = cli_main(
        ["recommend", "--patients", str(bad), "--run", str(run), "--config", str(cfg_path)]
    )
    assert code == 1 and "covariate-missing" in capsys.readouterr().err
    code = cli_main(
        [
            "recommend",
            "--patients",
            str(patients),
            "--run",
            str(tmp_path / "nowhere"),
            "--config",
            str(cfg_path),
        ]
    )
    assert code == 2 and "not found" in capsys.readouterr().err
