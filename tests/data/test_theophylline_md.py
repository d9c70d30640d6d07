"""Theophylline multiple dose (nlmixr2data ``theo_md``): a dose every 24 h for 7 days, written
out dose by dose, and the same regimen written NONMEM's way, one dose row per subject with
ADDL 6 and II 24. Both must validate to the same clean table and give the same predictions
and the same fit.

The file is read with ``config/theophylline.yaml``. Line 59 holds a concentration below 0
(subject 2, -1.13 mg/L at 168.3 h: the data are simulated with additive error), which the data
contract refuses; the tests mark it as a NONMEM comment row (a ``C`` column), as a user would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from ketamine_pmx.config import load_config, sampler_settings
from ketamine_pmx.data import DataValidationError, load_dataset
from ketamine_pmx.models import load_pk_spec, predict_ng_ml, prepare_pk_data

DATA = REPO / "tests" / "data" / "theophylline" / "theo_md.csv"
CONFIG = REPO / "config" / "theophylline.yaml"
SPEC = REPO / "models" / "pk_1cmt_oral.yaml"
N_DOSES, II_H = 7, 24.0
#: The one row the contract refuses (file line 59: header line 1, rows from line 2).
NEGATIVE_LINE = 59


@pytest.fixture(scope="module")
def data_cfg():
    return load_config(CONFIG)["data"]


def _explicit() -> pd.DataFrame:
    raw = pd.read_csv(DATA)
    raw.insert(0, "C", np.where(raw["DV"] < 0, "C", "."))
    return raw


def _addl(explicit: pd.DataFrame) -> pd.DataFrame:
    """One dose row per subject (its first) with ADDL 6 and II 24; the observations as they
    are; the file's order (by subject, then time, a dose before an observation at its time)."""
    doses = explicit[explicit["EVID"] != 0]
    first = doses.groupby("ID", as_index=False).first()
    assert (doses.groupby("ID").size() == N_DOSES).all()
    first["ADDL"], first["II"] = N_DOSES - 1, II_H
    obs = explicit[explicit["EVID"] == 0].assign(ADDL=0, II=0.0)
    both = pd.concat([first, obs], ignore_index=True)
    both["_dose_first"] = (both["EVID"] == 0).astype(int)
    return both.sort_values(["ID", "TIME", "_dose_first"], kind="stable").drop(
        columns="_dose_first"
    )


@pytest.fixture(scope="module")
def forms(tmp_path_factory, data_cfg):
    root = tmp_path_factory.mktemp("theo_md")
    explicit = _explicit()
    paths = {"explicit": root / "theo_md_explicit.csv", "addl": root / "theo_md_addl.csv"}
    explicit.to_csv(paths["explicit"], index=False)
    _addl(explicit).to_csv(paths["addl"], index=False)
    return {k: load_dataset(p, data_cfg).table for k, p in paths.items()}


def test_the_file_as_published_is_refused_on_its_one_negative_concentration(data_cfg):
    with pytest.raises(DataValidationError) as err:
        load_dataset(DATA, data_cfg)
    assert f"line {NEGATIVE_LINE}, column DV" in str(err.value)
    assert len(err.value.problems) == 1


def test_addl_file_has_one_dose_row_per_subject():
    addl = _addl(_explicit())
    assert (addl[addl["EVID"] != 0].groupby("ID").size() == 1).all()
    assert len(addl) == len(_explicit()) - 12 * (N_DOSES - 1)


def _key(table: pd.DataFrame) -> pd.DataFrame:
    cols = ["ID", "TIME", "EVID", "ANALYTE", "AMT", "RATE", "DV", "MDV", "BLQ", "WT"]
    t = table[cols].copy()
    t["ANALYTE"] = t["ANALYTE"].astype(str)
    t["_obs"] = (t["EVID"] == 0).astype(int)
    return t.sort_values(["ID", "TIME", "_obs"], kind="stable").reset_index(drop=True)


def test_both_forms_validate_to_the_same_clean_table(forms):
    explicit, addl = _key(forms["explicit"]), _key(forms["addl"])
    doses = addl[addl["EVID"] == 1]
    assert len(doses) == 12 * N_DOSES
    times = doses.groupby("ID")["TIME"].apply(list)
    assert all(t == list(np.arange(7) * II_H) for t in times) and len(times) == 12
    pd.testing.assert_frame_equal(explicit, addl, check_dtype=False)


def _one_cmt_oral(t, doses, ka, cl, v):
    """Superposed one-compartment first-order absorption, ng/mL (doses in mg, times in h)."""
    k = cl / v
    c = np.zeros_like(t)
    for time, amt in doses:
        dt = np.clip(t - time, 0.0, None)
        c += amt * 1000.0 * ka / (v * (ka - k)) * (np.exp(-k * dt) - np.exp(-ka * dt))
    return c


def test_both_forms_predict_the_same_concentrations(forms):
    spec = load_pk_spec(SPEC)
    preps = {k: prepare_pk_data(t, spec) for k, t in forms.items()}
    n = len(preps["explicit"].subjects)
    rng = np.random.default_rng(1)
    params = {
        "ka": rng.uniform(1.0, 2.5, (n, 1)),
        "cl": rng.uniform(2.0, 3.5, (n, 1)),
        "vc": rng.uniform(25.0, 40.0, (n, 1)),
        "f_bio": np.ones((n, 1)),
    }
    pred = {k: predict_ng_ml(spec, d, params) for k, d in preps.items()}
    np.testing.assert_allclose(pred["addl"], pred["explicit"], rtol=1e-9, atol=1e-9)
    # and both are the superposition of the seven doses (the trough before dose 7 included)
    data = preps["explicit"]
    for s, sid in enumerate(data.subjects):
        obs = data.obs["ID"].to_numpy() == sid
        d = data.doses[data.doses["ID"] == sid]
        expected = _one_cmt_oral(
            data.obs["TIME"].to_numpy(float)[obs],
            zip(d["TIME"], d["AMT"], strict=True),
            params["ka"][s, 0],
            params["cl"][s, 0],
            params["vc"][s, 0],
        )
        np.testing.assert_allclose(pred["explicit"][obs], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_both_forms_give_the_same_fit(forms):
    from ketamine_pmx.inference import fit_pk

    config = load_config(CONFIG, {"sampler": {"chains": 2, "draws": 300, "tune": 300}})
    spec = load_pk_spec(SPEC)
    post = {
        k: fit_pk(t, spec, sampler_settings(config, "pk"), seed=11)[0].posterior
        for k, t in forms.items()
    }
    for name in ("log_ka_pop", "log_cl_pop", "log_vc_pop", "sigma_add"):
        np.testing.assert_allclose(
            post["addl"][name].to_numpy(), post["explicit"][name].to_numpy(), rtol=1e-6
        )
