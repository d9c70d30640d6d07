"""Real data: O'Reilly's warfarin file read unedited, its PK fitted by the one command.

The file (tests/data/warfarin) holds warfarin concentrations (DVID cp, mg/L) and prothrombin
complex activity (DVID pca, % of normal). ``config/warfarin.yaml`` reads cp as the drug and
leaves the pca rows out (``data.exclude``); ``models/pk_1cmt_transit.yaml`` is the structure of
the nlmixr2 warfarin PK model. NONMEM 7 FOCE-I of that model: CL 0.135 L/h, V 7.78 L.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from ketamine_pmx import cli
from ketamine_pmx.config import load_config
from ketamine_pmx.data import DataValidationError, load_dataset, summarise, summary_markdown
from ketamine_pmx.io import read_csv
from ketamine_pmx.models import load_pk_spec

DATA = REPO / "tests" / "data" / "warfarin" / "warfarin.csv"
CONFIG = REPO / "config" / "warfarin.yaml"
SPEC = REPO / "models" / "pk_1cmt_transit.yaml"
NONMEM = {"cl": 0.135, "vc": 7.78}  # L/h, L


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG)


def test_the_file_reads_as_warfarin_pk_with_the_pd_rows_excluded(config):
    validated = load_dataset(DATA, config["data"])
    summary = summarise(validated)
    assert summary["subjects"] == 32
    assert summary["dose_rows"] == 32
    assert summary["analytes"] == {
        "DRUG": {"observations": 251, "subjects": 32, "blq": 0, "blq_share": 0.0}
    }
    assert summary["excluded_rows"] == {"data.exclude[0] DVID == pca": 232}
    assert "232 rows excluded by data.exclude[0] DVID == pca" in summary_markdown(summary)
    assert 251 + 232 + 32 == 515  # every row of the file: nothing else left out
    table = validated.table
    assert table["DV"].max() == pytest.approx(17600.0)  # 17.6 mg/L in ng/mL: no PCA value
    assert sorted(table["SEX"].unique()) == ["F", "M"]


def test_single_drug_without_the_exclusion_is_refused(config):
    """Without data.exclude the 232 PCA values (% of normal) would be read as mg/L."""
    data = copy.deepcopy(config["data"])
    data["exclude"] = []
    with pytest.raises(DataValidationError) as info:
        load_dataset(DATA, data)
    (problem,) = [p for p in info.value.problems if p.rule == "single-drug"]
    assert problem.column == "DVID" and len(problem.lines) == 232
    assert "pca (232 rows) is not mapped" in problem.message
    assert str(DATA) in str(info.value)


def test_the_spec_absorbs_through_one_transit_compartment():
    spec = load_pk_spec(SPEC)
    route = spec.spec["structure"]["routes"]["oral"]
    assert route == {"compartment": "depot", "ka": "ka", "transit": {"n": 1, "ktr": "ka"}}
    assert spec.spec["structure"]["default_route"] == "oral"
    assert spec.spec["residual"]["model"] == "combined"


@pytest.mark.slow
def test_a_short_fit_lands_near_nonmem(tmp_path):
    """The one command, a short run (2 chains x 300 draws): CL and V within a factor 1.5 of
    NONMEM's FOCE-I estimates. The real-sized run is in tests/data/warfarin/README.md."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    raw.pop("results_dir")
    raw["gate"] = {"allow_failure": True}
    raw["checks"] = {"replicates": 20}
    cfg = tmp_path / "warfarin.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "out"
    args = ["fit", "--data", str(DATA), "--spec", str(SPEC), "--config", str(cfg), "--out",
            str(out), "--draws", "300", "--tune", "300", "--chains", "2"]  # fmt: skip
    assert cli.main(args) == cli.EXIT_OK
    params = read_csv(out / cli.FIT_FILES["parameters"]).set_index("parameter")
    assert params.loc["cl", "unit"] == "L/h" and params.loc["vc", "unit"] == "L"
    for name, reference in NONMEM.items():
        median = float(params.loc[name, "median"])
        assert reference / 1.5 < median < reference * 1.5, (name, median)


def test_validate_says_what_it_set_aside(capsys):
    """The command's one-line verdict names the excluded rows, not only the summary file."""
    assert cli.main(["validate", str(DATA), "--config", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "valid (32 subjects, 32 doses, 251 observations" in out
    assert "232 rows excluded by data.exclude[0] DVID == pca" in out
