"""Covariates: a fit asks only for those its spec uses, and says so before any sampling, naming
the file, the column and the spec key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from ketamine_pmx.config import load_config
from ketamine_pmx.data import load_dataset
from ketamine_pmx.inference import fit_pk
from ketamine_pmx.models import (
    FitError,
    build_pk_model,
    check_covariates,
    empirical_bayes_start,
    load_pk_spec,
    prepare_pk_data,
    required_covariates,
)

THEO = REPO / "tests" / "data" / "theophylline" / "theo_sd.csv"
ORAL = REPO / "models" / "pk_1cmt_oral.yaml"


def oral_spec(tmp_path, **covariates):
    """models/pk_1cmt_oral.yaml with ``covariates`` in place of its own (none: no allometry)."""
    raw = yaml.safe_load(ORAL.read_text(encoding="utf-8"))
    raw["covariates"] = {"allometry": {"enabled": False}, **covariates}
    raw["card"]["name"] = name = "pk_1cmt_oral_cov"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_pk_spec(path)


@pytest.fixture(scope="module")
def without_wt(tmp_path_factory):
    """The theophylline file without its WT column, validated with no required covariate."""
    path = tmp_path_factory.mktemp("theo") / "theo_sd_no_wt.csv"
    pd.read_csv(THEO).drop(columns="WT").to_csv(path, index=False)
    data = {**load_config(REPO / "config" / "theophylline.yaml")["data"]}
    data["required_covariates"] = []
    return path, load_dataset(path, data).table


def test_a_spec_asks_only_for_the_covariates_it_uses(tmp_path):
    assert required_covariates(load_pk_spec(ORAL)) == {}
    default = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    assert required_covariates(default) == {
        "WT": "covariates.allometry",
        "CYP2B6": "covariates.cyp2b6",
    }
    allometric = oral_spec(tmp_path, allometry={"enabled": True})
    assert required_covariates(allometric) == {"WT": "covariates.allometry"}


def test_the_default_workflow_still_requires_what_its_models_use():
    config = load_config(REPO / "config" / "config.yaml")
    for name in config["models"]["pk"]:
        need = required_covariates(load_pk_spec(REPO / "models" / f"{name}.yaml"))
        assert "WT" in need
        assert set(need) <= set(config["data"]["required_covariates"])


def test_a_file_without_wt_prepares_for_a_spec_without_allometry(without_wt):
    _, table = without_wt
    assert table["WT"].isna().all()
    spec = load_pk_spec(ORAL)
    data = prepare_pk_data(table, spec)
    assert len(data.subjects) == 12 and np.isnan(data.wt).all()
    # the same observations and doses as from the file with WT
    full = load_dataset(THEO, load_config(REPO / "config" / "theophylline.yaml")["data"]).table
    reference = prepare_pk_data(full, spec)
    np.testing.assert_array_equal(data.subjects, reference.subjects)
    for part in ("obs", "doses"):
        pd.testing.assert_frame_equal(
            getattr(data, part).drop(columns="WT"), getattr(reference, part).drop(columns="WT")
        )


def test_a_model_without_allometry_has_a_finite_density_without_wt(without_wt):
    _, table = without_wt
    spec = load_pk_spec(ORAL)
    data = prepare_pk_data(table, spec)
    model = build_pk_model(spec, data, empirical_bayes_start(spec, data))
    assert np.isfinite(list(model.point_logps().values())).all()


def test_a_spec_with_allometry_names_the_file_column_and_key(tmp_path, without_wt):
    path, table = without_wt
    spec = oral_spec(tmp_path, allometry={"enabled": True})
    with pytest.raises(FitError) as caught:
        check_covariates(table, spec, str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: model pk_1cmt_oral_cov ({spec.path})")
    assert "column WT is missing for 12 of 12 subject(s)" in message
    assert "covariates.allometry" in message and "enabled: false" in message
    with pytest.raises(FitError, match="column WT"):
        prepare_pk_data(table, spec)


def test_a_cyp2b6_effect_asks_for_cyp2b6_only(tmp_path, without_wt):
    path, table = without_wt
    spec = oral_spec(tmp_path, cyp2b6={"parameter": "cl"})
    with pytest.raises(FitError) as caught:
        check_covariates(table, spec, str(path))
    message = str(caught.value)
    assert "column CYP2B6 is missing" in message and "covariates.cyp2b6" in message
    assert "WT" not in message


def test_the_fit_stops_before_sampling(tmp_path, without_wt):
    _, table = without_wt
    spec = oral_spec(tmp_path, allometry={"enabled": True})
    # no sampler settings at all: the check comes first
    with pytest.raises(FitError, match=r"covariates\.allometry"):
        fit_pk(table, spec, {}, seed=0)
