"""Dose routes and NONMEM's dose records in the models: routes declared by a spec (their lag,
bioavailability, absorption, transit, modelled rate and duration as model parameters), the
clean table's ROUTE, SS, II, RATE -1/-2 and reset rows passed to the layout per chain."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, evaluate

from ketamine_pmx.models import (
    FitError,
    PKSpec,
    SpecError,
    build_pk_model,
    chain_doses,
    load_pk_spec,
    predict_ng_ml,
    prepare_pk_data,
    required_parameters,
    resolve_route,
    tile_doses,
    validate_spec,
)
from ketamine_pmx.pk import Metabolite, Route, build_layout, np_conc_ng_ml

MODELS = REPO / "models"
IV_ORAL = MODELS / "pk_1cmt_iv_oral.yaml"


@pytest.fixture(scope="module")
def spec():
    return load_pk_spec(IV_ORAL)


def raw_spec() -> dict:
    return copy.deepcopy(load_pk_spec(IV_ORAL).spec)


def generic_rows(doses: list[dict], times: list[float], subject: int = 1) -> pd.DataFrame:
    """Clean-table rows of one subject of a generic drug: ``doses`` (dicts of dose columns
    over EVID 1 defaults) and observations at ``times``."""
    base = {"ID": subject, "EVID": 1, "ANALYTE": "DRUG", "AMT": 0.0, "RATE": 0.0, "DV": np.nan}
    rows = [{**base, **d} for d in doses]
    rows += [{**base, "TIME": t, "EVID": 0, "DV": 1.0} for t in times]
    table = pd.DataFrame(rows).sort_values(["TIME", "EVID"], ascending=[True, False], kind="stable")
    table["MDV"] = (table["EVID"] != 0).astype(int)
    table["LLOQ"] = np.nan
    table["BLQ"] = 0
    table["WT"] = 70.0
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Spec: routes, their parameters and the default route
# --------------------------------------------------------------------------------------


def test_declared_routes_need_their_parameters(spec):
    assert required_parameters(spec.structure) == {"cl", "vc", "ka", "f_oral", "lag_oral"}
    assert spec.kind("lag_oral") == "time"
    s = spec.structure
    assert resolve_route(s, "") == "iv" and resolve_route(s, "oral") == "oral"
    assert resolve_route(s, "central") == "central"
    assert resolve_route(s, "depot") is None  # no first-order absorption: no built-in depot
    oral = load_pk_spec(MODELS / "pk_1cmt_oral.yaml").structure
    assert resolve_route(oral, "") == "depot" and resolve_route(oral, "oral") == "depot"
    assert resolve_route(oral, "iv") == "central" and resolve_route(oral, "nasal") is None


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (
            lambda s: s["structure"]["routes"].update(nasal={"compartment": "lung"}),
            "structure.routes.nasal.compartment",
        ),
        (
            lambda s: s["structure"]["routes"]["oral"].update(lag="lag_x"),
            "structure.routes.oral.lag: 'lag_x' is not a parameter of the model",
        ),
        (
            lambda s: s["structure"]["routes"]["oral"].update(f="ka"),
            "structure.routes.oral.f: 'ka' is a rate parameter; f needs kind fraction",
        ),
        (
            lambda s: s["structure"]["routes"]["oral"].pop("ka"),
            "structure.routes.oral.ka: a depot route needs",
        ),
        (
            lambda s: s["structure"]["routes"]["iv"].update(ka="ka"),
            "structure.routes.iv.ka: a central route has no absorption",
        ),
        (
            lambda s: s["structure"]["routes"].update(central={"compartment": "central"}),
            "structure.routes.central: central is a built-in route",
        ),
        (
            lambda s: s["structure"].update(default_route="nasal"),
            "structure.default_route: 'nasal' is not a route",
        ),
        (
            lambda s: s["structure"]["routes"]["oral"].update(transit={"n": 3, "ktr": "ktr"}),
            "structure.routes.oral.transit.ktr: 'ktr' is not a parameter",
        ),
        (lambda s: s["parameters"].pop("f_oral"), "structure.routes.oral.f"),
        (
            lambda s: s["parameters"].update(ktr={"typical": 2.0}),
            "parameters.ktr: not used by the structure",
        ),
    ],
)
def test_invalid_routes_are_refused_naming_the_key(mutate, fragment):
    raw = raw_spec()
    mutate(raw)
    with pytest.raises(SpecError) as err:
        validate_spec(raw, "models/x.yaml")
    assert "models/x.yaml" in str(err.value) and fragment in str(err.value)


# --------------------------------------------------------------------------------------
# chain_doses: routes, steady state, modelled rates, resets, per chain
# --------------------------------------------------------------------------------------


def test_legacy_tables_give_the_legacy_arguments(spec):
    """A table without ROUTE/SS/II (or with them at their defaults) gives the same arrays,
    and build_layout the legacy (non-general) layout."""
    table = generic_rows([{"TIME": 0.0, "AMT": 100.0}, {"TIME": 12.0, "AMT": 50.0, "RATE": 25.0}], [1.0, 13.0])  # fmt: skip
    doses = table[table["EVID"] == 1]
    old = chain_doses(doses, {1: 0}, spec)
    new = chain_doses(doses.assign(ROUTE="", SS=0, II=0.0), {1: 0}, spec)
    for key in old:
        np.testing.assert_array_equal(old[key], new[key])
    assert list(old["dose_route"]) == ["iv", "iv"]
    assert not old["dose_ss"].any() and not old["dose_rate_mode"].any()
    assert old["reset_subject"].size == 0
    oral = load_pk_spec(MODELS / "pk_1cmt_oral.yaml")
    d = chain_doses(doses, {1: 0}, oral)
    assert list(d["dose_route"]) == ["depot", "depot"] and not d["dose_timing_modelled"].any()
    layout = build_layout(**{**d, "dose_rate_mg_h": 0.0}, obs_subject=[0], obs_time_h=[1.0])
    assert not layout.general


def test_routes_steady_state_and_modelled_rates_pass_through(spec):
    raw = raw_spec()
    raw["structure"]["routes"]["iv"].update(rate="r_iv", duration="d_iv")
    raw["parameters"].update(
        r_iv={"typical": 50.0, "kind": "rate", "source": "t"},
        d_iv={"typical": 2.0, "kind": "time", "source": "t"},
    )
    sp = PKSpec(name="x", path="models/x.yaml", spec=validate_spec(raw, "models/x.yaml"), sha256="")
    table = generic_rows(
        [
            {"TIME": 0.0, "AMT": 100.0, "ROUTE": "oral", "SS": 1, "II": 12.0},
            {"TIME": 12.0, "AMT": 100.0, "RATE": -1.0, "ROUTE": "iv"},
            {"TIME": 24.0, "AMT": 100.0, "RATE": -2.0, "ROUTE": ""},
            {"TIME": 36.0, "AMT": 100.0, "RATE": 50.0, "ROUTE": "central"},
            {"TIME": 48.0, "EVID": 3},
            {"TIME": 60.0, "EVID": 4, "AMT": 10.0, "ROUTE": "iv"},
        ],
        [1.0, 50.0, 61.0],
    )
    d = chain_doses(table[table["EVID"] != 0], {1: 0}, sp)
    assert list(d["dose_route"]) == ["oral", "iv", "iv", "central", "iv"]
    np.testing.assert_array_equal(d["dose_ss"], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(d["dose_ii_h"], [12.0, 0, 0, 0, 0])
    np.testing.assert_array_equal(d["dose_rate_mode"], [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(d["dose_rate_mg_h"], [0, 0, 0, 50.0, 0])
    # oral has a lag; RATE -1/-2 are modelled; the data-rate infusion is central (no f)
    np.testing.assert_array_equal(d["dose_timing_modelled"], [True, True, True, False, False])
    np.testing.assert_array_equal(d["reset_subject"], [0, 0])
    np.testing.assert_array_equal(d["reset_time_h"], [48.0, 60.0])
    tiled = tile_doses(d, 3, 1)
    assert set(tiled) == set(d)
    for key, value in d.items():
        assert len(tiled[key]) == 3 * len(value), key
    np.testing.assert_array_equal(tiled["reset_subject"], [0, 0, 1, 1, 2, 2])


def test_a_dose_of_a_route_the_spec_lacks_is_refused_naming_file_route_and_spec(spec):
    table = generic_rows([{"TIME": 0.0, "AMT": 100.0, "ROUTE": "nasal"}], [1.0])
    with pytest.raises(FitError) as err:
        prepare_pk_data(table, spec, "data/study.csv")
    msg = str(err.value)
    assert "data/study.csv" in msg and "'nasal'" in msg and str(IV_ORAL) in msg
    table = generic_rows([{"TIME": 0.0, "AMT": 100.0, "RATE": -1.0, "ROUTE": "oral"}], [1.0])
    with pytest.raises(FitError, match=r"route 'oral' of model pk_1cmt_iv_oral .* has no rate"):
        prepare_pk_data(table, spec, "data/study.csv")


def test_resets_and_steady_state_reach_every_chain():
    """Enantiomer chains: a reset resets both; an S_KET steady-state dose gives the R chain no
    dose, and its SS=1 resets the R chain too; a racemic dose with RATE -1 is refused."""
    ket = load_pk_spec(MODELS / "pk_2cmt_metab.yaml")
    base = {"ID": 7, "ANALYTE": "S_KET", "AMT": 20.0, "RATE": 0.0}
    doses = pd.DataFrame(
        [
            {**base, "TIME": 0.0, "EVID": 1, "SS": 1, "II": 24.0},
            {**base, "TIME": 24.0, "EVID": 1, "ANALYTE": "KET"},
            {**base, "TIME": 30.0, "EVID": 3, "AMT": 0.0},
        ]
    )
    d = chain_doses(doses, {7: 0}, ket)
    np.testing.assert_array_equal(d["dose_subject"], [0, 0, 1])  # S: both; R: the racemic one
    np.testing.assert_array_equal(d["dose_amt_mg"], [20.0, 10.0, 10.0])
    np.testing.assert_array_equal(d["dose_ss"], [1, 0, 0])
    assert sorted(zip(d["reset_subject"], d["reset_time_h"], strict=True)) == [
        (0, 30.0),
        (1, 0.0),
        (1, 30.0),
    ]
    doses.loc[1, "RATE"] = -1.0
    with pytest.raises(FitError, match="RATE -2"):
        chain_doses(doses, {7: 0}, ket)


# --------------------------------------------------------------------------------------
# Concentrations: routes from the individual parameters
# --------------------------------------------------------------------------------------


def test_routes_are_built_from_the_individual_parameters(spec):
    """A subject with an IV bolus and an oral dose: the model's prediction is the engine's
    with Route(ka, f, lag) from the individual values, and differs from a lag of 0."""
    table = generic_rows(
        [{"TIME": 0.0, "AMT": 100.0}, {"TIME": 24.0, "AMT": 200.0, "ROUTE": "oral"}],
        [1.0, 4.0, 24.1, 24.3, 25.0, 28.0, 36.0],
    )
    data = prepare_pk_data(table, spec)
    assert data.layout.general
    p = {"cl": 5.0, "vc": 40.0, "ka": 1.5, "f_oral": 0.7, "lag_oral": 0.2}
    pred = predict_ng_ml(spec, data, p)
    ref = np_conc_ng_ml(
        data.layout,
        cl=np.array([5.0]),
        vc=np.array([40.0]),
        routes={"iv": Route(), "oral": Route(ka=1.5, f=0.7, lag=0.2)},
    )
    np.testing.assert_allclose(pred, ref, rtol=1e-12)
    # by hand: one compartment, bolus and a lagged first-order input
    t = data.obs["TIME"].to_numpy()
    k = 5.0 / 40.0
    iv = 100.0 / 40.0 * np.exp(-k * t)
    dt = np.maximum(t - 24.0 - 0.2, 0.0)
    oral = 200.0 * 0.7 * 1.5 / (40.0 * (1.5 - k)) * (np.exp(-k * dt) - np.exp(-1.5 * dt))
    np.testing.assert_allclose(pred, 1000.0 * (iv + oral), rtol=1e-9)
    model = build_pk_model(spec, data, None)
    point = model.initial_point()
    y = evaluate(model, [model.logp(vars=[model["y"]], sum=False)[0]], point)[0]
    assert np.isfinite(y).all()
    assert {"log_lag_oral_pop", "logit_f_oral_pop"} <= set(point)


# --------------------------------------------------------------------------------------
# Routes into a metabolite's compartment
# --------------------------------------------------------------------------------------

RACEMIC = MODELS / "pk_racemic_2cmt_metab.yaml"


def racemic_with_routes(routes: dict) -> dict:
    raw = copy.deepcopy(load_pk_spec(RACEMIC).spec)
    raw["structure"]["routes"] = routes
    raw["covariates"] = {"allometry": {"enabled": False}}
    return raw


@pytest.mark.parametrize(
    ("metabolites", "route", "fragment"),
    [
        (
            ["NK"],
            {"compartment": "HNK"},
            "structure.routes.hnk_iv.compartment: HNK is not a metabolite",
        ),
        ([], {"compartment": "NK"}, "structure.routes.hnk_iv.compartment: NK is not a metabolite"),
        (
            ["NK", "HNK"],
            {"compartment": "NK", "transit": {"n": 2, "ktr": "cl_nk"}},
            "structure.routes.hnk_iv.transit: transit compartments need a depot (ka)",
        ),
    ],
)
def test_a_route_into_a_metabolite_the_structure_lacks_is_refused(metabolites, route, fragment):
    raw = racemic_with_routes({"hnk_iv": route})
    raw["structure"]["metabolites"] = metabolites
    with pytest.raises(SpecError) as err:
        validate_spec(raw, "models/x.yaml")
    assert fragment in str(err.value)


def test_a_route_into_nk_gives_the_engines_level_one_prediction():
    """A racemic NK infusion and bolus by the declared route nk_iv (compartment NK) and a
    ketamine bolus: the prediction is the engine's with Route(level=1), and the NK dose
    reaches NK and HNK but not ketamine."""
    raw = racemic_with_routes({"nk_iv": {"compartment": "NK"}, "hnk_iv": {"compartment": "HNK"}})
    spec = PKSpec(
        name="x", path="models/x.yaml", spec=validate_spec(raw, "models/x.yaml"), sha256=""
    )
    base = {"ID": 1, "EVID": 1, "ANALYTE": "KET", "AMT": 0.0, "RATE": 0.0, "DV": np.nan}
    doses = [
        {**base, "TIME": 0.0, "AMT": 20.0, "ROUTE": "nk_iv"},
        {**base, "TIME": 6.0, "AMT": 30.0, "RATE": 15.0, "ROUTE": "nk_iv"},
    ]
    obs = [{**base, "TIME": t, "EVID": 0, "DV": 1.0, "ANALYTE": a} for t in (0.0, 1.0, 7.0, 12.0) for a in ("KET", "NK", "HNK")]  # fmt: skip
    table = pd.DataFrame(doses + obs)
    table["MDV"] = (table["EVID"] != 0).astype(int)
    table["LLOQ"], table["BLQ"], table["WT"] = np.nan, 0, 70.0
    data = prepare_pk_data(table, spec)
    p = {"cl_f": 60.0, "cl_o": 15.0, "vc": 100.0, "q": 100.0, "vp": 180.0, "cl_nk": 70.0,
         "v_nk": 250.0, "fm_hnk": 0.5, "cl_hnk": 76.0, "v_hnk": 115.0}  # fmt: skip
    pred = predict_ng_ml(spec, data, p)
    analyte = data.obs["ANALYTE"].to_numpy()
    assert np.all(pred[analyte == "KET"] == 0)
    late = data.obs["TIME"].to_numpy() > 0
    assert np.all(pred[(analyte != "KET") & late] > 0)
    # the NK bolus at t = 0 is seen by the NK observation after it at t = 0
    at0 = (data.obs["TIME"].to_numpy() == 0) & (analyte == "NK")
    np.testing.assert_allclose(pred[at0], 1000.0 * 20.0 / 250.0, rtol=1e-12)
    mets = [
        Metabolite(cl_m=70.0, v_m=250.0, r=223.70 / 237.73, cl_f=60.0),
        Metabolite(cl_m=76.0, v_m=115.0, r=239.70 / 223.70, fm=0.5),
    ]
    ref = np_conc_ng_ml(
        data.layout, cl=75.0, vc=100.0, q=100.0, vp=180.0, metabolites=mets,
        routes={"nk_iv": Route(level=1), "hnk_iv": Route(level=2)},
    )  # fmt: skip
    np.testing.assert_allclose(pred, ref, rtol=1e-12)
    # by hand: NK after the bolus alone is one exponential
    k = 70.0 / 250.0
    nk = (analyte == "NK") & (data.obs["TIME"].to_numpy() == 1.0)
    np.testing.assert_allclose(pred[nk], 1000.0 * 20.0 / 250.0 * np.exp(-k), rtol=1e-12)
