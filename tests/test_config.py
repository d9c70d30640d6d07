"""Configuration: schema validation, defaults, and agreement with Snakemake's validate()."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO
from snakemake.utils import validate as snakemake_validate

from ketamine_pmx.config import (
    ConfigError,
    deep_merge,
    load_config,
    sampler_settings,
    schema_path,
    validate_config,
)


def test_shipped_configs_validate():
    default = load_config(REPO / "config" / "config.yaml")
    smoke = load_config(REPO / "config" / "smoke.yaml")
    assert default["simulation"]["arms"] == {"MDD": 120, "CRPS_OUT": 60, "CRPS_IN": 30}
    assert sum(smoke["simulation"]["arms"].values()) < 20
    assert smoke["seeds"]["simulate"] != default["seeds"]["simulate"]


def test_defaults_fill_nested_sections():
    cfg = validate_config({})
    assert cfg["data"]["blq"]["method"] == "M3"
    assert cfg["data"]["plausibility"]["WT"] == {"min": 20, "max": 300, "action": "error"}
    assert cfg["data"]["codes"]["dose_cmt"]["1"] == "KET"
    assert cfg["simulation"]["ode"]["rtol"] == 1e-8


def test_setting_one_plausibility_range_keeps_the_others():
    cfg = validate_config({"data": {"plausibility": {"WT": {"min": 30, "max": 200}}}})
    assert cfg["data"]["plausibility"]["WT"]["min"] == 30
    assert cfg["data"]["plausibility"]["MG"]["max"] == 3.0


def test_snakemake_validate_fills_the_same_defaults():
    with open(REPO / "config" / "smoke.yaml") as fh:
        raw = yaml.safe_load(fh)
    ours = validate_config(copy.deepcopy(raw))
    theirs = copy.deepcopy(raw)
    snakemake_validate(theirs, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert theirs == ours


def test_workflow_schema_is_the_packaged_schema():
    assert (
        REPO / "workflow" / "schemas" / "config.schema.yaml"
    ).resolve() == schema_path().resolve()


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"simulation": {"arms": {"MDD": -1}}}, "simulation.arms.MDD"),
        ({"data": {"blq": {"method": "M4"}}}, "data.blq.method"),
        ({"seeds": {"simulate": "abc"}}, "seeds.simulate"),
        ({"smaple": 1}, "Additional properties"),
        ({"data": {"plausibility": {"WT": {"min": 300, "max": 20}}}}, "min 300 > max 20"),
        ({"data": {"codes": {"dose_cmt": {"x": "KET"}}}}, "data.codes.dose_cmt"),
        ({"data": {"codes": {"dose_route": {"x": "depot"}}}}, "data.codes.dose_route"),
        ({"data": {"codes": {"dose_route": {"1": "Depot"}}}}, "data.codes.dose_route.1"),
        (
            {"data": {"codes": {"dose_cmt": {"1": "DRUG"}, "dose_route": {"1": "depot"}}}},
            "data.codes.dose_cmt and data.codes.dose_route",
        ),
        (
            {"data": {"codes": {"observation_code_column": "CMT", "observation": {"cp": "DRUG"}}}},
            "text codes are read from DVID only",
        ),
        ({"data": {"codes": {"observation": {"c-p": "DRUG"}}}}, "neither a number nor a text"),
        ({"data": {"codes": {"observation": {"cp": "DRUG", "CP": "KET"}}}}, "case-insensitively"),
        ({"data": {"codes": {"evid": {"101": 5}}}}, "data.codes.evid.101"),
        ({"data": {"single_drug": "yes"}}, "data.single_drug"),
        ({"data": {"lloq": {"MADRS": 1.0}}}, "data.lloq"),
        ({"data": {"lloq": {"KET": 0}}}, "data.lloq.KET"),
        ({"data": {"lloq": {"NK": "1 ng/mL"}}}, "data.lloq.NK"),
        ({"simulation": {"population_mix": {"european": 0}}}, "population_mix"),
        ({"sampler": {"pk": {"backend": "pymc"}}}, "sampler.pk"),
        ({"sampler": {"response": {"target_accept": 1.0}}}, "sampler.response.target_accept"),
    ],
)
def test_invalid_config_names_the_key(config, fragment):
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="my.yaml")
    assert "my.yaml" in str(err.value)
    assert fragment in str(err.value)


def test_lloq_is_given_per_concentration_analyte():
    from ketamine_pmx.config import load_schema
    from ketamine_pmx.contract import CONCENTRATION_ANALYTES

    lloq = load_schema()["properties"]["data"]["properties"]["lloq"]
    assert set(lloq["propertyNames"]["enum"]) == set(CONCENTRATION_ANALYTES)
    assert validate_config({})["data"]["lloq"] == {}
    cfg = validate_config({"data": {"lloq": {"KET": 1.0, "NK": 0.5}}})
    assert cfg["data"]["lloq"] == {"KET": 1.0, "NK": 0.5}


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_deep_merge_does_not_touch_inputs():
    base = {"a": {"b": 1, "c": 2}}
    out = deep_merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}}
    assert base == {"a": {"b": 1, "c": 2}}


def test_config_readme_documents_every_key():
    from ketamine_pmx.config import schema_markdown

    text = (REPO / "config" / "README.md").read_text()
    assert text == schema_markdown(), "regenerate: python -m ketamine_pmx.config > config/README.md"
    assert "`data.blq.method`" in text and "`simulation.truth.dser_effect`" in text


def snakemake_config(*names: str) -> dict:
    """The config a Snakemake run sees: config.yaml (the Snakefile's) with ``--configfile``
    files merged over it, validated."""
    merged: dict = {}
    for name in ("config.yaml", *names):
        with open(REPO / "config" / name) as fh:
            merged = deep_merge(merged, yaml.safe_load(fh))
    return validate_config(merged)


def test_each_family_samples_with_the_shared_settings_and_its_overrides():
    cfg = validate_config(
        {"sampler": {"draws": 300, "target_accept": 0.9, "pk": {"target_accept": 0.7}}}
    )
    pk, response = sampler_settings(cfg, "pk"), sampler_settings(cfg, "response")
    assert pk["target_accept"] == 0.7 and response["target_accept"] == 0.9
    assert pk["draws"] == response["draws"] == 300
    assert not {"pk", "response"} & (set(pk) | set(response))
    assert cfg["sampler"]["pk"] == {"target_accept": 0.7}  # the config itself is unchanged
    with pytest.raises(ValueError, match="family"):
        sampler_settings(cfg, "dosing")


def test_shipped_runs_keep_their_own_sampler_settings():
    default = snakemake_config()
    pk = sampler_settings(default, "pk")
    assert pk["target_accept"] < default["sampler"]["target_accept"]  # measured for PK
    assert sampler_settings(default, "response")["target_accept"] == 0.9
    smoke = sampler_settings(snakemake_config("smoke.yaml"), "pk")
    assert (smoke["draws"], smoke["target_accept"]) == (200, pk["target_accept"])
    theophylline = sampler_settings(snakemake_config("theophylline.yaml"), "pk")
    assert (theophylline["target_accept"], theophylline["max_depth"]) == (0.95, 10)


def test_gate_may_be_waived_for_comparison_models_only():
    from ketamine_pmx.checks import gate_allows
    from ketamine_pmx.config import ConfigError, load_config

    cfg = load_config(None, {"gate": {"allow_failure_for": ["pk_1cmt_metab"]}})
    assert gate_allows(cfg["gate"], "pk_1cmt_metab")
    assert not gate_allows(cfg["gate"], "pk_2cmt_metab")
    with pytest.raises(ConfigError, match="reference model"):
        load_config(None, {"gate": {"allow_failure_for": ["pk_2cmt_metab"]}})


@pytest.mark.parametrize(
    ("results_dir", "fragment"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        (".", "is the project folder"),
        ("..", "a folder above"),
        ("/", "a folder above"),
        ("data", "inside the project's input folder"),
        ("models/runs", "inside the project's input folder"),
        ("workflow", "inside the project's input folder"),
    ],
)
def test_results_dir_that_would_write_over_the_project_is_refused(
    results_dir, fragment, monkeypatch
):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as err:
        load_config(None, {"results_dir": results_dir})
    message = str(err.value)
    assert f"results_dir: {results_dir!r}" in message and fragment in message
    assert "results_dir must name a folder of the run's own" in message


def test_results_dir_may_not_hold_a_configured_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "trial.csv").write_text("ID\n")
    with pytest.raises(ConfigError, match=r"holds data.path \(study/trial.csv\)"):
        load_config(None, {"results_dir": "study", "data": {"path": "study/trial.csv"}})
    ok = load_config(None, {"results_dir": "study/out", "data": {"path": "study/trial.csv"}})
    assert ok["results_dir"] == "study/out"
    for fine in ("results", "results/smoke", str(tmp_path / "elsewhere")):
        assert load_config(None, {"results_dir": fine})["results_dir"] == fine


@pytest.mark.parametrize("results_dir", ["", ".", str(REPO)])
def test_snakemake_refuses_such_a_results_dir_before_any_job(results_dir, tmp_path):
    from conftest import run_snakemake

    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"results_dir": results_dir}))
    proc = run_snakemake(tmp_path, "-n", configfiles=("config/smoke.yaml", extra))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert f"results_dir: {results_dir!r}" in output and str(extra) in output
    assert "results_dir must name a folder of the run's own" in output
    assert "simulated/trial.csv" not in output  # nothing was planned


def test_the_removed_resources_section_is_refused_with_what_to_do_instead():
    """Rule resources are the rules' own, changed in a profile; a config that still sets them
    is refused (not silently ignored), by both validators, saying where they go now."""
    old = {"resources": {"fit_pk": {"threads": 2, "mem_mb": 4000, "runtime": 20}}}
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(old), source="my.yaml")
    assert "resources:" in str(err.value) and "set-resources" in str(err.value)
    with pytest.raises(Exception, match="set-resources"):
        snakemake_validate(
            copy.deepcopy(old), str(REPO / "workflow" / "schemas" / "config.schema.yaml")
        )
    assert "resources" not in validate_config({})  # no default: a run's config has none


def test_nonmem_record_keys():
    """Text DVID codes, CMT as a route, resets mapped from other EVIDs, single-drug datasets."""
    cfg = validate_config(
        {
            "data": {
                "codes": {
                    "observation": {"cp": "DRUG", "pca": "MADRS", "3": "KET"},
                    "dose_route": {"1": "depot", "2": "central", "3": "intranasal"},
                    "evid": {"103": 3, "104": 4},
                },
                "single_drug": True,
            }
        }
    )
    assert cfg["data"]["codes"]["dose_route"]["3"] == "intranasal"
    assert cfg["data"]["single_drug"] is True
    assert validate_config({})["data"]["single_drug"] is False
    assert validate_config({})["data"]["codes"]["dose_route"] == {}
