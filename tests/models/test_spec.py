"""Model specifications: the shipped specs load; broken ones are refused with the key named."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from ketamine_pmx.models import SpecError, load_pk_spec, required_parameters, validate_spec

SPECS = sorted((REPO / "models").glob("pk_*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_are_valid(path):
    spec = load_pk_spec(path)
    assert spec.name == path.stem
    assert set(spec.parameters) == required_parameters(spec.structure)
    assert spec.spec["card"]["identifiability"]
    assert all(p.get("source") for p in spec.parameters.values())


def test_enantiomer_and_racemic_analytes():
    two = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    rac = load_pk_spec(REPO / "models" / "pk_racemic_2cmt_metab.yaml")
    assert two.chains == ("S", "R") and rac.chains == ("RAC",)
    assert two.level_of("R_HNK") == ("R", 2) and rac.level_of("NK") == ("RAC", 1)
    assert two.typical("cl_f", "S") == 76.0 and rac.typical("cl_f", "RAC") == 63.0
    assert "v_nk" not in two.estimated() and "cl_f" in two.estimated()


def _raw():
    return yaml.safe_load((REPO / "models" / "pk_2cmt_metab.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: s["parameters"].pop("vp"), "parameters.vp: required"),
        (lambda s: s["parameters"].update(ka={"typical": 1.0}), "parameters.ka: not used"),
        (lambda s: s["structure"].update(metabolites=["HNK"]), "formed in sequence"),
        (lambda s: s["parameters"]["fm_hnk"].update(typical=1.5), "fraction must lie in (0, 1)"),
        (lambda s: s["parameters"]["v_nk"].update(bsv=True), "fixed parameter cannot"),
        (
            lambda s: s["covariates"]["cyp2b6"].update(parameter="cl_x"),
            "covariates.cyp2b6.parameter",
        ),
        (lambda s: s["residual"].update(model="exponential"), "residual.model"),
        (lambda s: s["parameters"]["vc"].update(typical=-1), "parameters.vc.typical"),
        (lambda s: s.update(eval="__import__('os')"), "Additional properties"),
    ],
)
def test_invalid_specs_are_refused(mutate, fragment):
    raw = copy.deepcopy(_raw())
    mutate(raw)
    with pytest.raises(SpecError) as err:
        validate_spec(raw, "models/x.yaml")
    assert "models/x.yaml" in str(err.value) and fragment in str(err.value)


def test_file_name_must_match_card(tmp_path):
    path = tmp_path / "other_name.yaml"
    path.write_text((REPO / "models" / "pk_2cmt_metab.yaml").read_text())
    with pytest.raises(SpecError, match="must equal the file name"):
        load_pk_spec(path)


def test_without_bsv_is_the_reduced_model_the_advice_proposes():
    from ketamine_pmx.models import bsv_groups, with_bsv, without_bsv

    spec = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    reduced = without_bsv(spec, ["q", "vp"])
    assert list(bsv_groups(reduced.parameters)) == ["cl", "vc", "cl_nk", "cl_hnk"]
    assert not reduced.parameters["q"]["bsv"] and reduced.sha256 != spec.sha256
    # a group of several parameters loses it on all of them, checked again as a spec (the
    # apparent-clearance centring needs the cl group)
    no_cl = without_bsv(with_bsv(spec, centred_scale="parameter"), ["cl"])
    assert not no_cl.parameters["cl_f"]["bsv"] and not no_cl.parameters["cl_o"]["bsv"]
    with pytest.raises(SpecError, match="apparent clearances need cl_f and cl_o"):
        without_bsv(spec, ["cl"])
    with pytest.raises(SpecError, match="not BSV group"):
        without_bsv(spec, ["v_nk"])
