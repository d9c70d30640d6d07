"""``ketamine-pmx fit``: a NONMEM-style file and a spec to a fitted, gated and checked model,
with the tables in the units the config declares; and the one conversion into those units."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from ketamine_pmx import cli
from ketamine_pmx.io import read_csv
from ketamine_pmx.results import (
    gof_in_user_units,
    parameter_summary,
    to_user_units,
    vpc_in_user_units,
)

THEO = REPO / "tests" / "data" / "theophylline" / "theo_sd.csv"
THEO_CONFIG = REPO / "config" / "theophylline.yaml"
SPEC = REPO / "models" / "pk_1cmt_oral.yaml"

# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quantity", "units", "expected", "label"),
    [
        (2.0, "time", {"time": "min"}, 120.0, "min"),
        (48.0, "time", {"time": "d"}, 2.0, "d"),
        (2.76, "clearance", {"time": "h"}, 2.76, "L/h"),
        (2.76, "clearance", {"time": "min"}, 0.046, "L/min"),
        (0.135, "clearance", {"time": "d"}, 3.24, "L/d"),
        (1.5, "rate", {"time": "min"}, 0.025, "1/min"),
        (31.5, "volume", {"time": "min", "conc": "mg/L"}, 31.5, "L"),
        (2840.0, "conc", {"conc": "mg/L"}, 2.84, "mg/L"),
        (2840.0, "conc", {"conc": "ug/L"}, 2840.0, "ug/L"),
        (0.5, "conc", {"conc": "ng/L"}, 500.0, "ng/L"),
        (0.3, "fraction", {"time": "min"}, 0.3, "-"),
    ],
)
def test_to_user_units(value, quantity, units, expected, label):
    converted, unit = to_user_units(value, quantity, units)
    assert converted == pytest.approx(expected) and unit == label


def test_nanomolar_uses_the_analytes_molar_mass_and_a_generic_drug_stays_in_ng_ml():
    value, unit = to_user_units(237.73, "conc", {"conc": "nM"}, "S_KET")
    assert value == pytest.approx(1000.0) and unit == "nM"
    assert to_user_units(5.0, "conc", {"conc": "nM"}, "DRUG") == (5.0, "ng/mL")


def _fake_fit() -> az.InferenceData:
    rng = np.random.default_rng(0)
    draws = (2, 50)
    return az.from_dict(
        posterior={
            "log_cl_pop": np.log(2.4) + 0.01 * rng.normal(size=(*draws, 1)),
            "log_vc_pop": np.log(30.0) + 0.01 * rng.normal(size=(*draws, 1)),
            "log_ka_pop": np.log(1.2) + 0.01 * rng.normal(size=(*draws, 1)),
            "logit_f_bio_pop": np.zeros((*draws, 1)),
            "omega_cl": 0.3 + 0.01 * rng.normal(size=(*draws, 1)),
            "sigma_add": 700.0 + rng.normal(size=(*draws, 1)),
            "eta_cl": rng.normal(size=(*draws, 3, 1)),
        },
        dims={
            **{
                v: ["enantiomer"]
                for v in (
                    "log_cl_pop",
                    "log_vc_pop",
                    "log_ka_pop",
                    "logit_f_bio_pop",
                    "omega_cl",
                    "sigma_add",
                )
            },
            "eta_cl": ["subject", "enantiomer"],
        },
        coords={"enantiomer": ["DRUG"], "subject": [1, 2, 3]},
    )


def test_parameter_summary_reports_natural_values_in_the_users_units():
    kinds = {"cl": "clearance", "vc": "volume", "ka": "rate", "f_bio": "fraction"}
    table = parameter_summary(_fake_fit(), kinds, {"time": "min", "conc": "mg/L"})
    got = table.set_index("parameter")
    assert list(got.index) == ["cl", "vc", "ka", "f_bio", "omega_cl", "sigma_add"]  # no etas
    assert got.loc["cl", "unit"] == "L/min"
    assert got.loc["cl", "median"] == pytest.approx(2.4 / 60, rel=0.02)
    assert got.loc["vc", "unit"] == "L" and got.loc["vc", "median"] == pytest.approx(30, rel=0.02)
    assert got.loc["ka", "unit"] == "1/min"
    assert got.loc["ka", "median"] == pytest.approx(0.02, rel=0.02)
    assert got.loc["f_bio", "median"] == pytest.approx(0.5) and got.loc["f_bio", "unit"] == "-"
    assert got.loc["omega_cl", "unit"] == "-"
    assert got.loc["sigma_add", "unit"] == "mg/L"
    assert got.loc["sigma_add", "mean"] == pytest.approx(0.7, rel=0.01)
    assert set(got["group"]) == {"DRUG"}
    assert (got["q5"] <= got["median"]).all() and (got["median"] <= got["q95"]).all()


def test_predictive_check_tables_in_the_users_units():
    vpc = pd.DataFrame(
        {
            "kind": "vpc",
            "stratum": "all",
            "analyte": ["DRUG", "DRUG"],
            "time_h": [0.5, 2.0],
            "time_lo": [0.25, 1.0],
            "time_hi": [1.0, 3.0],
            "percentile": [50.0, 50.0],
            "observed": [2840.0, 1000.0],
            "sim_lo": [2000.0, 800.0],
            "sim_median": [2500.0, 900.0],
            "sim_hi": [3000.0, 1100.0],
            "lloq": [0.0, 0.0],
        }
    )
    out = vpc_in_user_units(vpc, {"time": "min", "conc": "mg/L"})
    assert "time_h" not in out and list(out["time"]) == [30.0, 120.0]
    assert list(out["time_lo"]) == [15.0, 60.0] and set(out["time_unit"]) == {"min"}
    assert list(out["observed"]) == pytest.approx([2.84, 1.0])
    assert list(out["sim_hi"]) == pytest.approx([3.0, 1.1]) and set(out["conc_unit"]) == {"mg/L"}
    assert vpc["observed"].iloc[0] == 2840.0  # the input is not changed
    gof = pd.DataFrame(
        {
            "ID": [1],
            "TIME": [1.5],
            "ANALYTE": ["DRUG"],
            "DV": [2840.0],
            "BLQ": [0],
            "PRED": [2000.0],
            "IPRED": [2500.0],
            "NPD": [0.3],
        }
    )
    out = gof_in_user_units(gof, {"time": "min", "conc": "mg/L"})
    assert out.loc[0, "TIME"] == 90.0 and out.loc[0, "TIME_UNIT"] == "min"
    assert out.loc[0, ["DV", "PRED", "IPRED"]].tolist() == pytest.approx([2.84, 2.0, 2.5])
    assert out.loc[0, "CONC_UNIT"] == "mg/L" and out.loc[0, "NPD"] == 0.3


# --------------------------------------------------------------------------------------
# The command: refusals before any sampling
# --------------------------------------------------------------------------------------


def test_malformed_file_is_refused_before_sampling(tmp_path, monkeypatch, capsys):
    bad = pd.read_csv(THEO)
    bad.loc[5, "TIME"] = -1.0  # line 7 of the file (the header is line 1)
    bad["DV"] = bad["DV"].astype(object)
    bad.loc[9, "DV"] = "abc"  # line 11
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    out = tmp_path / "fit"
    monkeypatch.chdir(REPO)  # --spec by name, from the project's models.dir
    code = cli.main(["fit", "--data", str(path), "--spec", "pk_1cmt_oral", "--config",
                     str(THEO_CONFIG), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_INVALID_DATA
    assert f"{path}: line 7, column TIME" in err
    assert f"{path}: line 11, column DV" in err  # every problem at once
    assert not (out / cli.FIT_FILES["posterior"]).exists()


def test_unknown_spec_and_output_over_the_input_are_usage_errors(tmp_path, capsys):
    code = cli.main(["fit", "--data", str(THEO), "--spec", "no_such_model", "--config",
                     str(THEO_CONFIG), "--out", str(tmp_path)])  # fmt: skip
    assert code == cli.EXIT_USAGE and "no_such_model" in capsys.readouterr().err
    copy = tmp_path / "clean.csv"
    copy.write_bytes(THEO.read_bytes())
    code = cli.main(["fit", "--data", str(copy), "--spec", str(SPEC), "--config",
                     str(THEO_CONFIG), "--out", str(tmp_path)])  # fmt: skip
    assert code == cli.EXIT_USAGE and "overwrite the input" in capsys.readouterr().err


def test_a_spec_the_data_cannot_serve_is_refused_before_sampling(tmp_path, capsys):
    code = cli.main(["fit", "--data", str(THEO), "--spec", str(REPO / "models" /
                     "pk_2cmt_metab.yaml"), "--config", str(THEO_CONFIG), "--out",
                     str(tmp_path / "fit")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_INVALID_DATA and str(THEO) in err
    assert not (tmp_path / "fit" / cli.FIT_FILES["posterior"]).exists()


# --------------------------------------------------------------------------------------
# The command end to end: theophylline in minutes, a very short run
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_fit(tmp_path_factory):
    """theo_sd with TIME in minutes and a config saying so; 2 x 100 draws (the gate fails and
    the config lets it pass), 20 replicates."""
    root = tmp_path_factory.mktemp("fit")
    table = pd.read_csv(THEO)
    table["TIME"] = table["TIME"] * 60.0
    data = root / "theo_min.csv"
    table.to_csv(data, index=False)
    config = yaml.safe_load(THEO_CONFIG.read_text(encoding="utf-8"))
    config["data"]["units"]["time"] = "min"
    config["data"].pop("path")
    config.pop("results_dir")
    config["gate"] = {"allow_failure": True}
    config["checks"] = {"replicates": 20}
    cfg = root / "theo_min.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = root / "out"
    args = ["fit", "--data", str(data), "--spec", str(SPEC), "--config", str(cfg), "--out",
            str(out), "--draws", "100", "--tune", "150", "--chains", "2", "--seed", "7"]  # fmt: skip
    code = cli.main(args)
    return code, out, data, cfg


def test_fit_writes_every_file(short_fit):
    code, out, _, _ = short_fit
    assert code == cli.EXIT_OK
    for name in cli.FIT_FILES.values():
        assert (out / name).is_file(), name
    idata = az.from_netcdf(out / cli.FIT_FILES["posterior"])
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 100
    assert idata.posterior.attrs["seed"] == 7


def test_fit_reports_in_the_users_units(short_fit):
    _, out, _, _ = short_fit
    par = read_csv(out / cli.FIT_FILES["parameters"]).set_index("parameter")
    assert par.loc["cl", "unit"] == "L/min" and par.loc["vc", "unit"] == "L"
    assert par.loc["ka", "unit"] == "1/min" and par.loc["sigma_add", "unit"] == "mg/L"
    # nlmixr2: CL 2.76 L/h, V 31.5 L, residual SD 0.693 mg/L; a short run lands near them
    assert par.loc["cl", "median"] * 60 == pytest.approx(2.76, rel=0.2)
    assert par.loc["vc", "median"] == pytest.approx(31.5, rel=0.2)
    assert par.loc["sigma_add", "median"] == pytest.approx(0.693, rel=0.25)
    gof = read_csv(out / cli.FIT_FILES["gof_table"])
    assert set(gof["TIME_UNIT"]) == {"min"} and set(gof["CONC_UNIT"]) == {"mg/L"}
    assert gof["TIME"].max() == pytest.approx(24.65 * 60)  # the file's own times
    assert gof["DV"].max() == pytest.approx(11.4)  # mg/L, as in the file
    vpc = read_csv(out / cli.FIT_FILES["vpc_table"])
    assert set(vpc["time_unit"]) == {"min"} and set(vpc["conc_unit"]) == {"mg/L"}
    assert vpc["observed"].max() < 20  # mg/L, not ng/mL


def test_failed_gate_exits_with_the_reasons(short_fit, tmp_path, monkeypatch, capsys):
    """With the config's gate enforced the same short run fails: exit 3 naming the failures;
    the diagnostics are kept, no predictive check is run. The sampler is the fixture's posterior
    (sampling again would only repeat it)."""
    from ketamine_pmx.inference import load_idata, pk_fit
    from ketamine_pmx.models import prepare_pk_data

    _, out, data, cfg = short_fit

    def replay(table, spec, sampler, seed, source="the dataset"):
        return load_idata(out / cli.FIT_FILES["posterior"]), prepare_pk_data(table, spec, source)

    monkeypatch.setattr(pk_fit, "fit_pk", replay)
    config = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    config["gate"] = {"allow_failure": False}
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(config), encoding="utf-8")
    target = tmp_path / "out"
    code = cli.main(["fit", "--data", str(data), "--spec", str(SPEC), "--config", str(strict),
                     "--out", str(target)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_GATE
    assert "diagnostic gate FAILED for pk_1cmt_oral" in err and "ess_bulk" in err
    assert (target / cli.FIT_FILES["diagnostics"]).is_file()
    assert (target / cli.FIT_FILES["parameters"]).is_file()
    assert not (target / cli.FIT_FILES["vpc_table"]).exists()
