"""The virtual trial simulator: reproducibility, designs, numerics and the truth mechanism."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import PARAMETERS, make_config
from scipy.linalg import expm

from ketamine_pmx.config import load_config
from ketamine_pmx.simulate import (
    PK_ANALYTES,
    Dose,
    ParameterFileError,
    allocate_dose_levels,
    build_regimen,
    draw_pk_parameters,
    integrate_pk,
    load_parameters,
    pk_truth,
    sample_pk_truth,
    simulate_trial,
    system_matrix,
    time_course,
)

MW = {"KET": 237.73, "NK": 223.70, "HNK": 239.70}


@pytest.fixture(scope="module")
def params():
    return load_parameters(PARAMETERS)


@pytest.fixture(scope="module")
def trial():
    return simulate_trial(make_config(arms={"MDD": 6, "CRPS_OUT": 4, "CRPS_IN": 4}))


def _ind(**overrides) -> dict[str, float]:
    """Individual parameters of a simple subject (both enantiomers alike)."""
    base = {
        "cl": 60.0,
        "clf": 48.0,
        "vc": 100.0,
        "q": 0.0,
        "vp": 150.0,
        "cl_nk": 70.0,
        "v_nk": 250.0,
        "fm_hnk": 0.75,
        "cl_hnk": 30.0,
        "v_hnk": 115.0,
    }
    base.update(overrides)
    return {f"{e}_{k}": v for e in ("S", "R") for k, v in base.items()}


# --- reproducibility ----------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes(tmp_path):
    cfg = make_config(arms={"MDD": 3, "CRPS_OUT": 2, "CRPS_IN": 1})
    a = simulate_trial(cfg).write(tmp_path / "a")
    b = simulate_trial(cfg).write(tmp_path / "b")
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key


def test_another_seed_gives_another_trial():
    cfg = make_config(arms={"MDD": 3, "CRPS_OUT": 0, "CRPS_IN": 0})
    other = dict(cfg, seeds={"simulate": cfg["seeds"]["simulate"] + 1})
    d1, d2 = simulate_trial(cfg).data, simulate_trial(other).data
    assert not d1["DV"].equals(d2["DV"])


# --- designs ------------------------------------------------------------------------------


def test_mdd_arm_is_one_40_min_infusion_at_a_randomised_dose_level(trial):
    d = trial.data
    doses = d[(d["EVID"] == 1) & (d["ARM"] == "MDD")]
    assert doses.groupby("ID").size().eq(1).all()
    per_kg = (doses["AMT"] / doses["WT"]).round(3)
    # Six patients over four levels in equal shares: each level once or twice.
    counts = per_kg.value_counts()
    assert set(counts.index) == {0.1, 0.2, 0.5, 1.0} and set(counts) <= {1, 2}
    truth = trial.subjects.set_index("ID").loc[doses["ID"], "DOSE_MG_KG"]
    np.testing.assert_allclose(truth.to_numpy(), per_kg.to_numpy(), atol=1e-3)
    np.testing.assert_allclose(doses["AMT"] / doses["RATE"], 40 / 60, rtol=1e-3)
    assert (doses["ANALYTE"] == "KET").all() and (doses["TIME"] == 0).all()


def test_dose_levels_are_allocated_in_equal_shares(params):
    subjects = pd.DataFrame({"ARM": ["MDD"] * 10 + ["CRPS_OUT"] * 3})
    level = allocate_dose_levels(params, subjects, np.random.default_rng(0))
    assert np.isnan(level[10:]).all()
    assert sorted(pd.Series(level[:10]).value_counts()) == [2, 2, 3, 3]


def test_dose_levels_outside_a_per_kg_regimen_are_refused(params, tmp_path):
    bad = json.loads(json.dumps(params))
    bad["arms"]["CRPS_OUT"]["regimen"]["dose_levels_mg_kg"] = [0.5]
    bad["arms"]["MDD"]["regimen"]["dose_levels_mg_kg"] = [0.5, -1]
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    with pytest.raises(ParameterFileError) as err:
        load_parameters(path)
    assert "arms.CRPS_OUT.regimen.dose_levels_mg_kg" in str(err.value)
    assert "arms.MDD.regimen.dose_levels_mg_kg" in str(err.value)


def test_crps_outpatient_arm_is_ten_daily_4h_infusions_up_to_20_mg_h(trial):
    d = trial.data
    doses = d[(d["EVID"] == 1) & (d["ARM"] == "CRPS_OUT")]
    for _, g in doses.groupby("ID"):
        assert len(g) == 10
        np.testing.assert_allclose(np.diff(g["TIME"]), 24.0)
        np.testing.assert_allclose(g["RATE"], [10, 15, 20, 20, 20, 20, 20, 20, 20, 20])
        np.testing.assert_allclose(g["AMT"] / g["RATE"], 4.0)


def test_crps_inpatient_arm_is_4_to_5_days_continuous_up_to_40_mg_h(trial):
    d = trial.data
    doses = d[(d["EVID"] == 1) & (d["ARM"] == "CRPS_IN")]
    for _, g in doses.groupby("ID"):
        assert len(g) in (4, 5)
        np.testing.assert_allclose(g["TIME"], 24.0 * np.arange(len(g)))
        np.testing.assert_allclose(g["AMT"] / g["RATE"], 24.0)  # back-to-back: continuous
        assert g["RATE"].max() == 40.0 and g["RATE"].iloc[0] == 10.0


def test_sampling_is_rich_in_mdd_and_sparse_in_crps(trial):
    d = trial.data
    conc = d[(d["EVID"] == 0) & d["ANALYTE"].isin(PK_ANALYTES)]
    per_subject = conc.groupby(["ARM", "ID"])["TIME"].nunique().groupby("ARM").median()
    assert per_subject["MDD"] >= 8
    assert per_subject["CRPS_OUT"] <= 6 and per_subject["CRPS_IN"] <= 6


def test_every_sample_reports_all_analytes_and_blq_rows_are_kept(trial, params):
    d = trial.data
    conc = d[(d["EVID"] == 0) & d["ANALYTE"].isin(PK_ANALYTES)]
    assert conc.groupby(["ID", "TIME"]).size().eq(len(PK_ANALYTES)).all()
    blq = conc[conc["BLQ"] == 1]
    assert len(blq) > 0
    np.testing.assert_allclose(blq["DV"], blq["LLOQ"])
    lloq = blq["ANALYTE"].map(params["pk"]["lloq_ng_ml"])
    np.testing.assert_allclose(blq["LLOQ"], lloq)
    assert (conc.loc[conc["BLQ"] == 0, "DV"] >= conc.loc[conc["BLQ"] == 0, "LLOQ"]).all()


def test_endpoint_visits(trial):
    d = trial.data
    madrs = d[d["ANALYTE"] == "MADRS"]
    np.testing.assert_allclose(sorted(madrs["TIME"].unique()), [0, 4, 24, 72, 168, 336])
    nrs = d[(d["ANALYTE"] == "NRS")]
    assert nrs.groupby("ID").size().eq(8).all()  # baseline, end of course, 6 follow-ups
    first = d.groupby("ID").head(1)
    assert first["ANALYTE"].isin(["MADRS", "NRS"]).all()  # baseline score precedes the dose


def test_build_regimen_titration(params):
    reg = params["arms"]["CRPS_IN"]["regimen"]
    doses = build_regimen(reg, 70.0, n_days=5)
    assert [d.rate for d in doses] == [10, 20, 30, 40, 40]
    assert doses[-1].end == 120.0


# --- numerics against independent references ---------------------------------------------


def test_one_compartment_infusion_matches_the_analytic_solution():
    ind = _ind()  # q = 0: the parent is one compartment
    k = ind["S_cl"] / ind["S_vc"]
    dose = Dose(0.0, 35.0, 35.0 / 0.6667, "S_KET")
    t = np.array([0.1, 0.3, 0.6667, 1.0, 2.0, 5.0, 12.0, 24.0])
    sol = integrate_pk(ind, [dose], t, MW)
    t_inf = dose.end
    rate = dose.rate
    during = rate / ind["S_cl"] * (1 - np.exp(-k * np.minimum(t, t_inf)))
    expected = during * np.exp(-k * np.maximum(t - t_inf, 0.0)) * 1000.0
    np.testing.assert_allclose(sol.conc[:, PK_ANALYTES.index("S_KET")], expected, rtol=1e-6)
    assert np.all(sol.conc[:, PK_ANALYTES.index("R_KET")] == 0.0)  # esketamine: no R


def test_metabolite_after_a_bolus_matches_the_bateman_function():
    ind = _ind()
    k = ind["S_cl"] / ind["S_vc"]
    k_nk = ind["S_cl_nk"] / ind["S_v_nk"]
    t = np.array([0.25, 1.0, 3.0, 8.0, 20.0])
    sol = integrate_pk(ind, [Dose(0.0, 20.0, 0.0, "S_KET")], t, MW)
    formation = ind["S_clf"] / ind["S_vc"] * MW["NK"] / MW["KET"]
    amount = 20.0 * formation / (k_nk - k) * (np.exp(-k * t) - np.exp(-k_nk * t))
    np.testing.assert_allclose(
        sol.conc[:, PK_ANALYTES.index("S_NK")], amount / ind["S_v_nk"] * 1000, rtol=1e-6
    )


def test_repeated_infusions_match_the_matrix_exponential(params):
    """Full system, two-compartment parent, titrated repeated infusions: ODE vs expm."""
    subj = pd.DataFrame({"ID": [1], "WT": [82.0], "CYP2B6_CLASS": ["IM"]})
    ind = draw_pk_parameters(params, subj, np.random.default_rng(3)).iloc[0].to_dict()
    doses = build_regimen(params["arms"]["CRPS_OUT"]["regimen"], 82.0)
    t = np.array([1.0, 4.0, 30.0, 100.0, 220.0, 228.0, 260.0])
    sol = integrate_pk(ind, doses, t, MW)
    a = system_matrix(ind, MW)
    n = a.shape[0]
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n] = a
    breaks = sorted({0.0, *(d.time for d in doses), *(d.end for d in doses), *t})
    x = np.zeros(n)
    got = {}
    for lo, hi in itertools.pairwise(breaks):
        b = np.zeros(n)
        for d in doses:
            if d.time <= lo < d.end:
                b[0] += 0.5 * d.rate
                b[4] += 0.5 * d.rate
        aug[:n, n] = b
        x = (expm(aug * (hi - lo)) @ np.append(x, 1.0))[:n]
        got[hi] = x.copy()
    conc_s_ket = np.array([got[ti][0] for ti in t]) / ind["S_vc"] * 1000
    conc_r_hnk = np.array([got[ti][7] for ti in t]) / ind["R_v_hnk"] * 1000
    np.testing.assert_allclose(
        sol.conc[:, PK_ANALYTES.index("S_KET")], conc_s_ket, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        sol.conc[:, PK_ANALYTES.index("R_HNK")], conc_r_hnk, rtol=1e-6, atol=1e-7
    )


def test_auc_states_agree_with_the_dose_over_clearance():
    ind = _ind(q=40.0)
    sol = integrate_pk(ind, [Dose(0.0, 30.0, 30.0, "KET")], np.array([400.0]), MW)
    # AUC(0-inf) of the parent = dose / CL (per enantiomer, mg -> ng*h/mL).
    np.testing.assert_allclose(
        sol.auc[0, PK_ANALYTES.index("S_KET")], 15.0 / ind["S_cl"] * 1000, rtol=1e-5
    )


# --- covariates and the truth mechanism -----------------------------------------------------


def test_cyp2b6_poor_metabolisers_form_less_norketamine(params):
    subj = pd.DataFrame({"ID": [1, 2, 3], "WT": [70.0] * 3, "CYP2B6_CLASS": ["NM", "IM", "PM"]})
    ind = draw_pk_parameters(
        dict(params, pk={**params["pk"], "omega": {}}), subj, np.random.default_rng(0)
    )
    dose = build_regimen(params["arms"]["MDD"]["regimen"], 70.0)
    ratios = []
    for i in range(3):
        sol = integrate_pk(ind.iloc[i].to_dict(), dose, np.array([48.0]), MW)
        auc = sol.auc[0]
        ratios.append(auc[PK_ANALYTES.index("S_NK")] / auc[PK_ANALYTES.index("S_KET")])
    assert ratios[0] > ratios[1] > ratios[2]


@pytest.fixture(scope="module")
def large_trial():
    """A large MDD trial with many poor metabolisers (about 20 s)."""
    cfg = make_config(
        arms={"MDD": 400, "CRPS_OUT": 0, "CRPS_IN": 0}, population_mix={"african": 1.0}
    )
    return simulate_trial(cfg)


def test_poor_metabolisers_have_a_lower_nk_to_ketamine_auc_ratio_in_a_trial(large_trial):
    s = large_trial.subjects
    ratio = (s["AUC_S_NK"] + s["AUC_R_NK"]) / (s["AUC_S_KET"] + s["AUC_R_KET"])
    med = ratio.groupby(s["CYP2B6_CLASS"]).median()
    assert (s["CYP2B6_CLASS"] == "PM").sum() >= 30
    assert med["NM"] > med["IM"] > med["PM"]


def test_responders_are_more_frequent_at_low_dserine_and_high_hnk_exposure(large_trial):
    s = large_trial.subjects
    by_dser = s.groupby(pd.qcut(s["DSER"], 3, labels=["low", "mid", "high"]), observed=True)[
        "RESPONDER"
    ].mean()
    by_hnk = s.groupby(pd.qcut(s["AUC_HNK"], 3, labels=["low", "mid", "high"]), observed=True)[
        "RESPONDER"
    ].mean()
    assert by_dser["low"] - by_dser["high"] > 0.15
    assert by_hnk["high"] - by_hnk["low"] > 0.10
    # The observed responder flag follows the true probability.
    assert abs(s["RESPONDER"].mean() - s["P_RESPONSE"].mean()) < 0.06


def test_dserine_switch_removes_its_effect():
    cfg = make_config(arms={"MDD": 2, "CRPS_OUT": 1, "CRPS_IN": 0}, truth={"dser_effect": 0.0})
    pop = simulate_trial(cfg).population
    assert pop["logit_scale_effects"]["b_dser_per_um"] == {"MDD": 0.0, "CRPS": 0.0}
    assert pop["truth_overrides"]["dser_effect"] == 0.0


def test_pk_truth_switches_remove_bsv_and_set_any_value():
    """A truth the default model was not tuned to: no BSV on q and vp, NK volume 200 L (the
    models fix 250 L), every MDD patient at 0.5 mg/kg."""
    truth = {
        "no_bsv": ["q", "vp"],
        "parameters": {
            "pk.enantiomers.*.v_nk": 200,
            "arms.MDD.regimen.dose_levels_mg_kg": [0.5],
        },
    }
    trial = simulate_trial(make_config(arms={"MDD": 8, "CRPS_OUT": 0, "CRPS_IN": 0}, truth=truth))
    s, pk = trial.subjects, trial.population["parameters"]["pk"]
    wt = s["WT"].to_numpy(float) / 70.0
    for e in ("S", "R"):
        assert (s[f"eta_{e}_q"] == 0).all() and (s[f"eta_{e}_vp"] == 0).all()
        np.testing.assert_allclose(s[f"{e}_q"], pk["enantiomers"][e]["q"] * wt**0.75)
        np.testing.assert_allclose(s[f"{e}_vp"], pk["enantiomers"][e]["vp"] * wt)
        np.testing.assert_allclose(s[f"{e}_v_nk"], 200.0 * wt)
        assert s[f"eta_{e}_cl"].std() > 0.05  # the other groups keep their variability
    assert pk["omega"]["q"] == pk["omega"]["vp"] == 0.0 and pk["omega"]["cl"] == 0.25
    assert (s["DOSE_MG_KG"] == 0.5).all()
    # the truth the fitted models are compared with follows the switches
    assert pk_truth(trial.population)["omega_q[S]"] == 0.0
    assert sample_pk_truth(trial.population, s)["omega_vp[R]"] == 0.0
    assert trial.population["truth_overrides"]["no_bsv"] == ["q", "vp"]


@pytest.mark.parametrize(
    ("truth", "message"),
    [
        (
            {"parameters": {"pk.enantiomers.*.vnk": 200}},
            "simulation.truth.parameters.pk.enantiomers",
        ),
        (
            {"parameters": {"pk.enantiomers.S.fm_nk": 1.5}},
            "pk.enantiomers.S.fm_nk: must be a fraction",
        ),
        ({"parameters": {"pk.omega": 0.1}}, "a number takes a number"),
        ({"no_bsv": ["qq"]}, "simulation.truth.no_bsv: 'qq' is not a BSV group"),
    ],
)
def test_bad_truth_switches_are_refused_with_the_key(truth, message):
    with pytest.raises(ParameterFileError, match=re.escape(message)):
        simulate_trial(make_config(arms={"MDD": 1, "CRPS_OUT": 0, "CRPS_IN": 0}, truth=truth))


def test_truth_switches_are_checked_by_the_schema():
    from ketamine_pmx.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape("simulation.truth.parameters")):
        make_config(truth={"parameters": {"pk.omega.q": "none"}})
    with pytest.raises(ConfigError, match=re.escape("simulation.truth.no_bsv")):
        make_config(truth={"no_bsv": "q"})


def test_relief_fades_over_a_week_in_mdd_and_weeks_in_crps(params):
    mdd = params["response"]["time_course"]["MDD"]
    crps = params["response"]["time_course"]["CRPS"]
    g = time_course(np.array([24.0, 168.0, 336.0]), 0.667, mdd)
    assert g[1] / g[0] < 0.5 and g[2] / g[0] < 0.1
    end = 230.0
    g = time_course(np.array([end + 168, end + 12 * 168]), end, crps)
    assert g[1] / g[0] < 0.1


def test_scores_return_towards_baseline(large_trial):
    d = large_trial.data
    madrs = d[d["ANALYTE"] == "MADRS"].pivot(index="ID", columns="TIME", values="DV")
    assert madrs[24.0].mean() < madrs[0.0].mean() - 10
    assert madrs[336.0].mean() > madrs[24.0].mean() + 8


def test_truth_file_describes_itself(tmp_path, trial):
    paths = trial.write(tmp_path)
    pop = json.loads(paths["population"].read_text())
    assert len(pop["parameter_file_sha256"]) == 64
    assert set(pop["response_by_arm"]) == {"MDD", "CRPS_OUT", "CRPS_IN"}
    subjects = pd.read_csv(paths["subjects"])
    assert {"P_RESPONSE", "AUC_HNK", "S_cl", "R_cl_hnk", "RESPONDER"} <= set(subjects.columns)


def test_sample_truth_is_what_the_subjects_true_parameters_say(trial):
    """The trial's realised values, recomputed from the subjects' individual parameters (not
    from the effect columns the function reads)."""
    pop, subj = trial.population, trial.subjects
    pk = pop["parameters"]["pk"]
    sample, truth = sample_pk_truth(pop, subj), pk_truth(pop)
    assert sample.keys() == truth.keys()
    wt = subj["WT"].to_numpy() / 70.0
    nm = subj["CYP2B6_CLASS"].to_numpy() == "NM"
    im = subj["CYP2B6_CLASS"].to_numpy() == "IM"
    assert nm.any() and im.any()
    shift = []
    for c, p in pk["enantiomers"].items():
        for name, col, typical, power in [
            ("q", "q", p["q"], 0.75),
            ("vc", "vc", p["vc"], 1.0),
            ("cl_hnk", "cl_hnk", p["cl_hnk"], 0.75),
        ]:
            log_dev = np.log(subj[f"{c}_{col}"].to_numpy() / (typical * wt**power))
            assert sample[f"log_{name}_pop[{c}]"] == pytest.approx(
                typical * np.exp(log_dev.mean()), rel=1e-9
            )
            assert sample[f"omega_{name}[{c}]"] == pytest.approx(log_dev.std(ddof=1), rel=1e-9)
        clf = subj[f"{c}_clf"].to_numpy() / (p["fm_nk"] * p["cl"] * wt**0.75)
        mult = subj["CYP2B6_CLASS"].map(pk["cyp2b6_clf_multiplier"]).to_numpy()
        log_dev = np.log(clf / mult)
        assert sample[f"log_cl_f_pop[{c}]"] == pytest.approx(
            p["fm_nk"] * p["cl"] * np.exp(log_dev[nm].mean()), rel=1e-9
        )
        shift.append(log_dev[im].mean() - log_dev[nm].mean())
        s_r = [np.log(subj[f"{e}_vp"].to_numpy() / wt) for e in ("S", "R")]
        assert sample["rho_vp"] == pytest.approx(np.corrcoef(*s_r)[0, 1], rel=1e-9)
        assert sample[f"logit_fm_hnk_pop[{c}]"] == truth[f"logit_fm_hnk_pop[{c}]"]
    assert sample["e_cyp2b6[IM]"] == pytest.approx(0.65 * np.exp(np.mean(shift)), rel=1e-9)
    assert sample["sigma_prop[S_HNK]"] == truth["sigma_prop[S_HNK]"]
    # 14 subjects: the realised values are not the population's
    assert sample["log_q_pop[S]"] != pytest.approx(truth["log_q_pop[S]"], rel=1e-3)


def test_bad_parameter_file_is_refused(tmp_path, params):
    broken = json.loads(json.dumps(params))
    broken["pk"]["enantiomers"]["S"]["cl"] = -5
    del broken["pk"]["lloq_ng_ml"]["R_HNK"]
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(broken))
    with pytest.raises(ParameterFileError) as err:
        load_parameters(path)
    assert "pk.enantiomers.S.cl" in str(err.value) and "pk.lloq_ng_ml.R_HNK" in str(err.value)


def test_unknown_arm_in_config_is_refused():
    cfg = load_config(None, {"simulation": {"parameters": str(PARAMETERS), "arms": {"PLACEBO": 3}}})
    with pytest.raises(ParameterFileError, match="PLACEBO"):
        simulate_trial(cfg)
