"""Ketamine by several routes (``models/pk_2cmt_metab_routes.yaml``): intravenous, intranasal
and oral doses of the racemate or esketamine reach the enantiomer chains and their metabolites
as the engine says each dose alone does, and a crossover of IV and intranasal doses recovers
the nasal bioavailability and absorption rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, clean_pk_table, make_config
from scipy.special import expit

from ketamine_pmx.contract import MOLAR_MASS_G_MOL
from ketamine_pmx.data import validate_frame
from ketamine_pmx.inference import fit_pk
from ketamine_pmx.models import load_pk_spec, predict_ng_ml, prepare_pk_data
from ketamine_pmx.pk import Metabolite, Route, build_layout, np_conc_ng_ml

CARD = REPO / "models" / "pk_2cmt_metab_routes.yaml"
CHAINS = ("S", "R")
#: Each chain's analytes by level (parent, NK, HNK).
LEVELS = {"S": ("S_KET", "S_NK", "S_HNK"), "R": ("R_KET", "R_NK", "R_HNK")}
#: Individual parameters per chain (S, R) of one 70-kg subject.
TRUTH = {
    "cl_f": (80.0, 70.0),
    "cl_o": (20.0, 18.0),
    "vc": (90.0, 110.0),
    "q": (110.0, 95.0),
    "vp": (170.0, 190.0),
    "cl_nk": (65.0, 75.0),
    "v_nk": (250.0, 250.0),
    "fm_hnk": (0.4, 0.55),
    "cl_hnk": (76.0, 70.0),
    "v_hnk": (115.0, 115.0),
    "ka_in": (2.5, 3.2),
    "f_in": (0.5, 0.45),
    "ka_po": (0.9, 1.1),
    "f_po": (0.15, 0.2),
    "lag_po": (0.3, 0.3),
}
#: Sampling times (h) after each dose.
AFTER_DOSE_H = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 24.0)


def chain_alone(chain: int, dose: dict, times: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Concentrations (ng/mL) of one chain at ``times`` / ``level`` after one dose alone,
    assembled here from the engine (``ketamine_pmx.pk``) and the truth's values."""
    p = {k: v[chain] for k, v in TRUTH.items()}
    layout = build_layout(
        dose_subject=[0],
        dose_time_h=[dose["time"]],
        dose_amt_mg=[dose["amt"][chain]],
        dose_rate_mg_h=[dose["rate"] * dose["amt"][chain] / sum(dose["amt"])],
        dose_route=[dose["route"]],
        dose_timing_modelled=[dose["route"] == "oral"],
        obs_subject=np.zeros(len(times), int),
        obs_time_h=times,
        obs_level=level,
        n_subject=1,
    )
    nk = Metabolite(
        cl_m=p["cl_nk"],
        v_m=p["v_nk"],
        r=MOLAR_MASS_G_MOL["NK"] / MOLAR_MASS_G_MOL["KET"],
        cl_f=p["cl_f"],
    )
    hnk = Metabolite(
        cl_m=p["cl_hnk"],
        v_m=p["v_hnk"],
        r=MOLAR_MASS_G_MOL["HNK"] / MOLAR_MASS_G_MOL["NK"],
        fm=p["fm_hnk"],
    )
    routes = {
        "iv": Route(),
        "intranasal": Route(ka=p["ka_in"], f=p["f_in"]),
        "oral": Route(ka=p["ka_po"], f=p["f_po"], lag=p["lag_po"]),
    }
    arr = {k: np.array([p[k]]) for k in ("vc", "q", "vp")}
    return np_conc_ng_ml(
        layout, cl=np.array([p["cl_f"] + p["cl_o"]]), metabolites=[nk, hnk], routes=routes, **arr
    )


# one subject: a 40-min IV infusion of racemic ketamine, intranasal esketamine two days later,
# oral racemic ketamine two days after that (each dose's amount per chain S, R; the rate is
# the whole dose's, each chain's infusion lasting as long)
DOSES = (
    {"time": 0.0, "amt": (17.5, 17.5), "rate": 52.5, "route": "iv", "product": "KET"},
    {"time": 48.0, "amt": (56.0, 0.0), "rate": 0.0, "route": "intranasal", "product": "S_KET"},
    {"time": 96.0, "amt": (50.0, 50.0), "rate": 0.0, "route": "oral", "product": "KET"},
)


def three_route_file() -> pd.DataFrame:
    """The subject's data file as text (what ``read_raw`` gives): dose rows with ROUTE and
    ANALYTE naming the product, six analytes observed after each dose."""
    covs = {"WT": "70", "CYP2B6": "*1/*1"}
    rows = []
    for d in DOSES:
        amt = sum(d["amt"])
        rate = f"{d['rate']:g}"
        rows.append({"ID": "1", "TIME": f"{d['time']:g}", "EVID": "1", "AMT": f"{amt:g}",
                     "RATE": rate, "ANALYTE": d["product"], "ROUTE": d["route"], "DV": "."})  # fmt: skip
        for dt in AFTER_DOSE_H:
            for analyte in (*LEVELS["S"], *LEVELS["R"]):
                rows.append({"ID": "1", "TIME": f"{d['time'] + dt:g}", "EVID": "0", "AMT": "0",
                             "RATE": "0", "ANALYTE": analyte, "ROUTE": "", "DV": "1.5"})  # fmt: skip
    return pd.DataFrame([{**r, **covs} for r in rows])


def small_data_config() -> dict:
    """The smoke config's data section, asking only for the covariates the card uses."""
    data = make_config()["data"]
    data["required_covariates"] = ["WT", "CYP2B6"]
    return data


def test_three_routes_predict_the_sum_of_each_dose_alone():
    """IV racemate + intranasal esketamine + oral racemate in one subject, read through data
    validation (ROUTE column, ANALYTE as the product): the card's predictions are the sum of
    the engine's predictions of each dose alone, analyte by analyte; the esketamine dose
    reaches the S chain only, and the R chain sees nothing of it."""
    spec = load_pk_spec(CARD)
    table = validate_frame(three_route_file(), small_data_config(), "three_routes.csv").table
    dose_rows = table[table["EVID"] == 1]
    assert dose_rows["ROUTE"].tolist() == ["iv", "intranasal", "oral"]
    assert dose_rows["ANALYTE"].tolist() == ["KET", "S_KET", "KET"]
    data = prepare_pk_data(table, spec, "three_routes.csv")
    assert data.layout.general  # the oral lag: dose timing modelled
    params = {k: np.array([v]) for k, v in TRUTH.items()}  # (subject, chain)
    pred = predict_ng_ml(spec, data, params)
    assert np.isfinite(pred).all() and (pred > 0).all()

    obs = data.obs
    expected = np.zeros(len(obs))
    for c, chain in enumerate(CHAINS):
        mine = (obs["chain"] == chain).to_numpy()
        times = obs.loc[mine, "TIME"].to_numpy(float)
        level = obs.loc[mine, "level"].to_numpy(int)
        assert set(obs.loc[mine, "ANALYTE"]) == set(LEVELS[chain])
        alone = [chain_alone(c, d, times, level) for d in DOSES]
        expected[mine] = np.sum(alone, axis=0)
        if chain == "R":  # the intranasal esketamine dose gives the R chain nothing
            np.testing.assert_array_equal(alone[1], 0.0)
        else:  # ... and the S chain something, parent and both metabolites
            nasal = (times > 48.0) & (times < 96.0)
            assert (alone[1][nasal] > 0).all()
    np.testing.assert_allclose(pred, expected, rtol=1e-10, atol=1e-12)

    # the R chain between the nasal and the oral dose: only the IV dose's tail
    r_mid = ((obs["chain"] == "R") & obs["TIME"].between(48.0, 96.0)).to_numpy()
    r_times = obs.loc[r_mid, "TIME"].to_numpy(float)
    r_level = obs.loc[r_mid, "level"].to_numpy(int)
    np.testing.assert_allclose(pred[r_mid], chain_alone(1, DOSES[0], r_times, r_level), rtol=1e-10)


# --------------------------------------------------------------------------------------
# Recovery: a crossover of IV and intranasal racemic ketamine
# --------------------------------------------------------------------------------------

SHORT_NUTS = {
    "backend": "nutpie",
    "draws": 200,
    "tune": 300,
    "chains": 2,
    "cores": 2,
    "target_accept": 0.8,
    "low_rank_mass_matrix": False,
}
#: Population values of the recovery trial (S, R); route parameters without BSV.
POP = {
    "cl_f": (76.0, 72.0),
    "cl_o": (19.0, 18.0),
    "vc": (100.0, 100.0),
    "q": (100.0, 100.0),
    "vp": (180.0, 180.0),
    "cl_nk": (70.0, 70.0),
    "v_nk": (250.0, 250.0),
    "fm_hnk": (0.5, 0.5),
    "cl_hnk": (76.0, 76.0),
    "v_hnk": (115.0, 115.0),
    "ka_in": (2.0, 2.0),
    "f_in": (0.4, 0.4),
}
#: Sampling times (h) after each dose of the crossover.
CROSSOVER_H = np.array([0.17, 0.33, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0])


def crossover_table(n: int, rng: np.random.Generator, sigma: float) -> pd.DataFrame:
    """A clean table of ``n`` 70-kg normal metabolisers: 35 mg racemic ketamine IV over 40 min,
    then 56 mg racemic ketamine intranasally a week later; the six analytes at
    ``CROSSOVER_H`` after each; 20% log-normal BSV on the clearances and volumes, log-normal
    residual error ``sigma`` (numpy engine)."""
    period_h = 168.0
    p = {}
    for k, (s, r) in POP.items():
        p[k] = np.tile([s, r], (n, 1)).astype(float)
        if k in ("cl_f", "cl_o", "vc", "q", "vp", "cl_nk", "cl_hnk"):
            eta = 0.2 * rng.standard_normal((n, 1 if k in ("cl_f", "cl_o") else 2))
            p[k] = p[k] * np.exp(eta)
    nk_r = MOLAR_MASS_G_MOL["NK"] / MOLAR_MASS_G_MOL["KET"]
    hnk_r = MOLAR_MASS_G_MOL["HNK"] / MOLAR_MASS_G_MOL["NK"]
    flat = {k: v.reshape(-1) for k, v in p.items()}  # pseudo-subject = subject * 2 + chain
    times = np.concatenate([CROSSOVER_H, period_h + CROSSOVER_H])
    n_ps, n_t = 2 * n, len(times)
    layout = build_layout(
        dose_subject=np.repeat(np.arange(n_ps), 2),
        dose_time_h=np.tile([0.0, period_h], n_ps),
        dose_amt_mg=np.tile([17.5, 28.0], n_ps),
        dose_rate_mg_h=np.tile([26.25, 0.0], n_ps),  # each chain's half over 40 min
        dose_route=np.tile(["iv", "intranasal"], n_ps),
        obs_subject=np.repeat(np.arange(n_ps), 3 * n_t),
        obs_time_h=np.tile(np.tile(times, 3), n_ps),
        obs_level=np.tile(np.repeat([0, 1, 2], n_t), n_ps),
        n_subject=n_ps,
    )
    conc = np_conc_ng_ml(
        layout,
        cl=flat["cl_f"] + flat["cl_o"],
        vc=flat["vc"],
        q=flat["q"],
        vp=flat["vp"],
        metabolites=[
            Metabolite(cl_m=flat["cl_nk"], v_m=flat["v_nk"], r=nk_r, cl_f=flat["cl_f"]),
            Metabolite(cl_m=flat["cl_hnk"], v_m=flat["v_hnk"], r=hnk_r, fm=flat["fm_hnk"]),
        ],
        routes={"iv": Route(), "intranasal": Route(ka=flat["ka_in"], f=flat["f_in"])},
    )
    dv = conc * np.exp(sigma * rng.standard_normal(conc.size))
    ids = np.arange(1, n + 1)
    analyte = np.array([LEVELS[c][lv] for c in CHAINS for lv in (0, 1, 2) for _ in times])
    obs = pd.DataFrame(
        {
            "ID": np.repeat(ids, 2 * 3 * n_t),
            "TIME": np.tile(np.tile(times, 6), n),
            "EVID": 0,
            "ANALYTE": np.tile(analyte, n),
            "AMT": 0.0,
            "RATE": 0.0,
            "ROUTE": "",
            "DV": dv,
        }
    )
    dose_rows = pd.DataFrame(
        {
            "ID": np.repeat(ids, 2),
            "TIME": np.tile([0.0, period_h], n),
            "EVID": 1,
            "ANALYTE": "KET",
            "AMT": np.tile([35.0, 56.0], n),
            "RATE": np.tile([52.5, 0.0], n),
            "ROUTE": np.tile(["iv", "intranasal"], n),
            "DV": np.nan,
        }
    )
    return clean_pk_table(dose_rows, obs, WT=70.0, CYP2B6_CLASS="NM")


@pytest.mark.slow
def test_an_iv_and_intranasal_crossover_recovers_nasal_bioavailability_and_ka():
    """Twelve subjects, racemic ketamine IV then intranasally, six analytes, 15% log-normal
    error: each chain's f_in and ka_in lie within their 90% intervals and their posterior
    medians within 25% of the truth."""
    rng = np.random.default_rng(11)
    table = crossover_table(12, rng, sigma=0.15)
    spec = load_pk_spec(CARD)
    idata, data = fit_pk(table, spec, SHORT_NUTS, seed=3)
    assert set(data.doses["ROUTE"]) == {"iv", "intranasal"}
    post = idata.posterior
    assert int(idata.sample_stats["diverging"].sum()) <= 4
    draws = {
        "f_in": expit(post["logit_f_in_pop"]),
        "ka_in": np.exp(post["log_ka_in_pop"]),
    }
    for name, values in draws.items():
        for c, chain in enumerate(CHAINS):
            v = values.sel(enantiomer=chain).values.reshape(-1)
            truth = POP[name][c]
            lo, hi = np.quantile(v, [0.05, 0.95])
            assert lo <= truth <= hi, (name, chain, lo, hi)
            assert np.median(v) == pytest.approx(truth, rel=0.25), (name, chain)
