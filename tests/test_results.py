"""The public results API: ketamine_pmx.results.load on a fake results tree and on the smoke run."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO

from ketamine_pmx import results
from ketamine_pmx.exposure import save_exposures
from ketamine_pmx.inference import save_idata
from ketamine_pmx.io import write_csv, write_json


def _posterior(model: str, seed: int) -> az.InferenceData:
    rng = np.random.default_rng(seed)
    idata = az.from_dict(
        posterior={"log_cl_pop": rng.normal(size=(2, 5, 2))},
        dims={"log_cl_pop": ["enantiomer"]},
        coords={"enantiomer": ["S", "R"]},
    )
    idata.posterior.attrs["model"] = model
    return idata


@pytest.fixture
def fake_run(tmp_path):
    """A results tree with two PK models, one response model and a few tables."""
    root = tmp_path / "results" / "trial"
    write_csv(root / "data" / "clean.csv", pd.DataFrame({"ID": [1, 1], "DV": [np.nan, 2.5]}))
    write_json(root / "data" / "summary.json", {"subjects": 1})
    for k, model in enumerate(("pk_b", "pk_a")):
        save_idata(_posterior(model, k), root / "pk" / model / "posterior.nc")
        write_csv(
            root / "pk" / model / "diagnostics.csv",
            pd.DataFrame({"parameter": ["log_cl_pop[S]"], "r_hat": [1.0 + k / 100]}),
        )
    save_idata(_posterior("response_x", 9), root / "response" / "response_x" / "posterior.nc")
    # debris a killed job leaves (atomic writes) and a folder without a posterior
    (root / "pk" / "pk_a" / ".posterior.nc.abc123.tmp").write_bytes(b"half")
    (root / "pk" / ".pk_hidden").mkdir()
    (root / "pk" / ".pk_hidden" / "posterior.nc").write_bytes(b"not netcdf")
    (root / "pk" / "pk_unfitted").mkdir()
    for outcome in ("responder", "pct_change"):
        write_csv(
            root / "compare" / f"response_{outcome}.csv",
            pd.DataFrame({"model": ["response_x"], "elpd_loo": [-3.0]}),
        )
    write_csv(root / "compare" / "pk.csv", pd.DataFrame({"model": ["pk_a", "pk_b"]}))
    exposures = xr.Dataset(
        {"exposure": (("chain", "draw", "subject", "metric"), np.ones((1, 2, 3, 1)))},
        coords={"subject": [1, 2, 3], "metric": ["AUC_HNK"]},
        attrs={"pk_model": "pk_b"},
    )
    save_exposures(exposures, root / "exposure" / "exposures.nc")
    return root


def test_posteriors_are_found_by_model_and_loaded_with_their_coords(fake_run):
    res = results.load(fake_run)
    assert res.pk_models == ["pk_a", "pk_b"]  # sorted; debris and unfitted folders ignored
    assert res.response_models == ["response_x"]
    idata = res.pk["pk_b"]
    assert isinstance(idata, az.InferenceData)
    assert idata.posterior.attrs["model"] == "pk_b"
    assert list(idata.posterior["enantiomer"].values) == ["S", "R"]
    assert res.pk["pk_b"] is idata  # read once
    assert res.pk.path("pk_a") == fake_run / "pk" / "pk_a" / "posterior.nc"
    assert res.reference_pk_model == "pk_b"
    assert res.exposures["exposure"].dims == ("chain", "draw", "subject", "metric")
    with pytest.raises(KeyError, match=r"pk_c.*present: pk_a, pk_b"):
        res.pk["pk_c"]


def test_tables_are_read_lazily_with_missing_values(fake_run):
    res = results.load(fake_run)
    assert res._cache == {}  # nothing read by load()
    assert res.data["DV"].isna().tolist() == [True, False]
    assert res.data_summary == {"subjects": 1}
    assert set(res.pk_diagnostics) == {"pk_a", "pk_b"}
    assert res.pk_diagnostics["pk_a"]["r_hat"].iloc[0] == pytest.approx(1.01)
    assert set(res.comparison) == {"responder", "pct_change"}
    assert res.comparison["responder"]["model"].tolist() == ["response_x"]
    assert res.comparison_pk["model"].tolist() == ["pk_a", "pk_b"]
    assert dict(res.vpc_summary) == {}  # keyed results of a stage that has not run: empty


def test_a_result_the_run_has_not_written_is_named_in_the_error(fake_run):
    res = results.load(fake_run)
    with pytest.raises(results.ResultsError, match=r"effects/biomarker_effects\.csv"):
        _ = res.effects
    with pytest.raises(KeyError, match="not a result name"):
        res.get("effect")
    assert "effects" not in res.available()
    assert {"pk", "response", "exposures", "data", "comparison"} <= set(res.available())


def test_recommendations_are_optional(fake_run):
    """The dosing stage comes later: without it the table is None, with it a table."""
    res = results.load(fake_run)
    assert res.recommendations is None
    write_csv(
        fake_run / "dosing" / "recommendations.csv",
        pd.DataFrame({"ID": [1], "regimen": ["0.5 mg/kg"]}),
    )
    assert results.load(fake_run).recommendations["regimen"].tolist() == ["0.5 mg/kg"]


def test_not_a_results_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(results.ResultsError, match=f"{missing}.*does not exist"):
        results.load(missing)
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    with pytest.raises(results.ResultsError, match=f"{project} .*is not a results directory"):
        results.load(project)


def test_the_error_points_to_results_directories_below(fake_run):
    with pytest.raises(results.ResultsError, match=r"results directories in it: .*trial"):
        results.load(fake_run.parent)


def test_default_directory_comes_from_the_environment(fake_run, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(fake_run))
    assert results.load().root == fake_run
    monkeypatch.delenv(results.RESULTS_ENV)
    monkeypatch.chdir(fake_run.parents[1])  # ./results holds the run results/trial
    with pytest.raises(results.ResultsError, match="results directories in it: results/trial"):
        results.load()


def test_every_result_is_an_attribute_with_a_docstring():
    for name, entry in results.FILES.items():
        prop = getattr(results.Results, name)
        assert isinstance(prop, property) and entry.path in prop.__doc__


@pytest.mark.workflow
def test_smoke_run_results(smoke_run):
    """Everything the smoke run writes is reachable through the API, with its coords."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    res = results.load(smoke_run)
    assert res.pk_models == sorted(config["models"]["pk"])
    assert res.response_models == sorted(smoke["models"]["response"])
    assert res.reference_pk_model == config["models"]["pk"][0]
    for model in res.pk_models:
        post = res.pk[model].posterior
        assert post.attrs["model"] == model and post.sizes["subject"] == 9
        assert set(res.vpc_summary[model]["kind"]) == {"vpc", "pcvpc"}
        assert {"DV", "PRED", "IPRED"} <= set(res.gof[model].columns)
        assert res.pk_gate[model]["draws"] == 200
    for model in res.response_models:
        assert res.response[model].log_likelihood.sizes["patient"] == 9
        assert not res.response_groups[model].empty
    assert set(res.comparison) == {"responder", "pct_change"}
    assert set(res.effects["model"]) == set(res.response_models)
    assert res.exposures.sizes["subject"] == 9
    assert set(res.exposure_summary["ID"]) == set(res.data["ID"])
    assert len(res.recommendations) == 12  # data/new_patients.csv
    assert set(res.regimens["ID"]) == set(res.recommendations["ID"])
    assert "guided" in set(res.dosing_trial["STRATEGY"])
    assert res.truth_population["seed"] == smoke["seeds"]["simulate"]
    assert set(res.truth_subjects["ID"]) == set(res.data["ID"])
    missing = set(results.FILES) - set(res.available())
    assert not missing, f"results the smoke run writes but the API does not find: {missing}"
