"""Rows left out by config ``data.exclude`` (NONMEM's IGNORE list), and the guard of
``data.single_drug`` against reading a second endpoint as the drug.

The files are small hand-written single-drug studies in the shape of the warfarin data
(``tests/data/warfarin``): one oral dose, concentrations coded ``cp`` and a PD marker coded
``pca`` in a text DVID column.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from validation_support import find, make_config, problems_of

from ketamine_pmx.config import ConfigError, load_config
from ketamine_pmx.data import (
    DataValidationError,
    load_dataset,
    read_clean,
    summarise,
    summary_markdown,
    write_outputs,
)

HEADER = "ID,TIME,EVID,AMT,DV,DVID,WT,FLAG"


def _subject(i: int, pca: bool = True) -> list[str]:
    """A dose, three warfarin concentrations (mg/L) and, by default, two PCA values (%)."""
    rows = [f"{i},0,1,100,.,cp,70,."]
    rows += [f"{i},{t},0,0,{c},cp,70,." for t, c in ((1, 1.9), (12, 8.6))]
    rows += [f"{i},24,0,0,44,pca,70,."] if pca else []
    rows += [f"{i},48,0,0,2.7,cp,70,."]
    rows += [f"{i},48,0,0,28,PCA,70,."] if pca else []
    return rows


def _write(tmp_path: Path, lines: list[str], name: str = "warf.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cfg(**data) -> dict:
    base = {"single_drug": True, "units": {"conc": "mg/L"}, "required_covariates": ["WT"]}
    base.update(data)
    return make_config(base)["data"]


PK_ONLY = {
    "codes": {"observation": {"cp": "DRUG"}},
    "exclude": [{"column": "DVID", "equals": "pca"}],
}


# data.single_drug with a second observation code ------------------------------------------


def test_single_drug_refuses_a_second_unmapped_code(tmp_path):
    """The warfarin case: PCA (% of normal) would silently be read as warfarin in mg/L."""
    path = _write(tmp_path, [HEADER, *_subject(1), *_subject(2)])
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, _cfg())
    (problem,) = find(info.value.problems, "single-drug", "DVID")
    assert problem.lines == (3, 4, 5, 6, 7, 9, 10, 11, 12, 13)  # every observation row
    text = str(info.value)
    assert str(path) in text
    for needed in ("DVID", "cp", "pca", "data.codes.observation", "data.exclude"):
        assert needed in problem.message, needed


def test_single_drug_names_only_the_codes_left_unmapped(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1)])
    cfg = _cfg(codes={"observation": {"cp": "DRUG"}})
    (problem,) = find(problems_of(path, cfg), "single-drug", "DVID")
    assert problem.lines == (5, 7)
    assert "pca (2 rows) is not mapped" in problem.message
    assert "equals: pca" in problem.message


def test_single_drug_reads_codes_mapped_to_drug(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1)])
    cfg = _cfg(codes={"observation": {"cp": "DRUG", "pca": "DRUG"}})
    table = load_dataset(path, cfg).table
    assert (table.loc[table["EVID"] == 0, "ANALYTE"] == "DRUG").sum() == 5


def test_single_drug_refuses_a_code_mapped_to_another_analyte(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1)])
    cfg = _cfg(codes={"observation": {"cp": "DRUG", "pca": "MADRS"}})
    (problem,) = find(problems_of(path, cfg), "single-drug", "DVID")
    assert "pca to MADRS" in problem.message and problem.lines == (5, 7)


def test_single_drug_with_one_code_needs_no_map(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1, pca=False), *_subject(2, pca=False)])
    table = load_dataset(path, _cfg()).table
    assert (table["ANALYTE"] == "DRUG").all() and len(table) == 8


def test_default_numbering_is_not_a_mapping(tmp_path):
    """DVID 1 and 2 would be S_KET and R_KET in the project's numbering: in single-drug mode
    that numbering maps nothing, so two numeric codes must be mapped or excluded too."""
    lines = [HEADER, "1,0,1,100,.,.,70,.", "1,1,0,0,2.0,1,70,.", "1,2,0,0,30,2,70,."]
    (problem,) = find(problems_of(_write(tmp_path, lines), _cfg()), "single-drug", "DVID")
    assert "1 (1 rows), 2 (1 rows) are not mapped" in problem.message


def test_single_drug_codes_in_cmt(tmp_path):
    lines = ["ID,TIME,EVID,AMT,DV,CMT,WT", "1,0,1,100,.,1,70", "1,1,0,0,2,2,70", "1,2,0,0,3,3,70"]
    cfg = _cfg(codes={"observation_code_column": "CMT", "observation": {"2": "DRUG"}})
    (problem,) = find(problems_of(_write(tmp_path, lines), cfg), "single-drug", "CMT")
    assert problem.lines == (4,)
    ok = _cfg(
        codes={"observation_code_column": "CMT", "observation": {"2": "DRUG"}},
        exclude=[{"column": "CMT", "equals": 3}],
    )
    assert load_dataset(_write(tmp_path, lines), ok).notes["excluded_rows"] == {
        "data.exclude[0] CMT == 3": 1
    }


# data.exclude ------------------------------------------------------------------------------


def test_excluded_rows_are_left_out_and_counted(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1), *_subject(2)])
    validated = load_dataset(path, _cfg(**PK_ONLY))
    table = validated.table
    assert len(table) == 8 and (table["ANALYTE"] == "DRUG").all()
    assert table["DV"].max() == pytest.approx(8600.0)  # mg/L -> ng/mL; no PCA value left
    summary = summarise(validated)
    assert summary["excluded_rows"] == {"data.exclude[0] DVID == pca": 4}
    assert "- 4 rows excluded by data.exclude[0] DVID == pca" in summary_markdown(summary)
    out = tmp_path / "out"
    out.mkdir()
    written = write_outputs(validated, out / "clean.csv", out / "s.json", out / "s.md")
    assert written["excluded_rows"] == summary["excluded_rows"]
    assert len(read_clean(out / "clean.csv")) == 8


@pytest.mark.parametrize(
    ("condition", "removed"),
    [
        ({"column": "DVID", "equals": "PCA"}, 4),  # text: case-insensitive (pca and PCA)
        ({"column": "DVID", "in": ["pca", "xyz"]}, 4),
        ({"column": "FLAG", "equals": 1}, 1),  # a column outside the contract; 1 is 1.0
        ({"column": "FLAG", "equals": "1.0"}, 1),
        ({"column": "TIME", "above": 40}, 4),  # TIME 48: a cp and a PCA row per subject
        ({"column": "TIME", "below": 0}, 0),  # strictly below: the doses at 0 stay
        ({"column": "DV", "below": 2}, 2),  # the '.' of the dose rows matches nothing
    ],
)
def test_exclude_tests(tmp_path, condition, removed):
    lines = [HEADER, *_subject(1), *_subject(2)]
    lines[3] = "1,12,0,0,8.6,cp,70,1.0"  # FLAG set on one row
    cfg = _cfg(codes={"observation": {"cp": "DRUG", "pca": "DRUG"}}, exclude=[condition])
    validated = load_dataset(_write(tmp_path, lines), cfg)
    assert validated.notes["excluded_rows"] == {_label(condition): removed}
    assert len(validated.table) == 12 - removed


def _label(condition: dict) -> str:
    test, value = next((k, v) for k, v in condition.items() if k != "column")
    shown = {"equals": "==", "in": "in", "below": "<", "above": ">"}[test]
    value = f"[{', '.join(map(str, value))}]" if test == "in" else value
    return f"data.exclude[0] {condition['column']} {shown} {value}"


def test_a_row_is_counted_under_the_first_condition_it_meets(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1)])
    cfg = _cfg(
        codes={"observation": {"cp": "DRUG"}},
        exclude=[
            {"column": "DVID", "equals": "pca"},
            {"column": "TIME", "above": 40},
            {"column": "DVID", "equals": "nothing"},
        ],
    )
    validated = load_dataset(path, cfg)
    assert validated.notes["excluded_rows"] == {
        "data.exclude[0] DVID == pca": 2,
        "data.exclude[1] TIME > 40": 1,  # the cp row at 48; the pca row at 48 went before
        "data.exclude[2] DVID == nothing": 0,
    }
    (warning,) = [w for w in validated.warnings if w.rule == "exclude-column"]
    assert "data.exclude[2]" in warning.message and "removes no row" in warning.message


def test_exclude_by_file_name_or_contract_name(tmp_path):
    lines = [HEADER.replace("DVID", "type"), *_subject(1)]
    path = _write(tmp_path, lines)
    for column in ("type", "DVID"):
        cfg = _cfg(
            columns={"DVID": "type"},
            codes={"observation": {"cp": "DRUG"}},
            exclude=[{"column": column, "equals": "pca"}],
        )
        assert sum(load_dataset(path, cfg).notes["excluded_rows"].values()) == 2


def test_exclude_naming_a_missing_column_is_an_error(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1)])
    cfg = _cfg(**{**PK_ONLY, "exclude": [{"column": "DVIDX", "equals": "pca"}]})
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, cfg)
    (problem,) = find(info.value.problems, "exclude-column")
    assert problem.severity == "error" and problem.column == "DVIDX"
    assert "data.exclude[0] DVIDX == pca" in problem.message
    assert "did you mean 'DVID'" in problem.message
    assert str(path) in str(info.value)


def test_excluded_rows_keep_their_file_lines(tmp_path):
    lines = [HEADER, *_subject(1)]
    lines.append("1,72,0,0,-1,cp,70,.")  # line 8, after the excluded rows 5 and 7
    (problem,) = find(problems_of(_write(tmp_path, lines), _cfg(**PK_ONLY)), "dv-negative")
    assert problem.lines == (8,)


def test_excluded_rows_are_not_checked(tmp_path):
    """As NONMEM's IGNORE: a row left out is not read, so its values break no rule."""
    lines = [HEADER, *_subject(1), "1,50,0,0,-5,pca,70,."]
    assert load_dataset(_write(tmp_path, lines), _cfg(**PK_ONLY)).notes["excluded_rows"] == {
        "data.exclude[0] DVID == pca": 3
    }


def test_every_row_excluded(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1)])
    cfg = _cfg(exclude=[{"column": "ID", "equals": 1}])
    (problem,) = find(problems_of(path, cfg), "file-readable")
    assert "6 rows excluded by config data.exclude" in problem.message


def test_no_exclude_no_count(tmp_path):
    path = _write(tmp_path, [HEADER, *_subject(1, pca=False)])
    validated = load_dataset(path, _cfg())
    assert validated.notes["excluded_rows"] == {}
    assert "excluded" not in summary_markdown(summarise(validated))


# The configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"column": "DVID"}, "give exactly one of equals, in, below, above (got none)"),
        ({"column": "DVID", "equals": "pca", "in": ["x"]}, "(got equals and in)"),
        ({"column": "DV", "below": 1, "above": 9}, "(got below and above)"),
        ({"column": "DV", "below": "low"}, "is not of type 'number'"),
        ({"column": "DVID", "in": []}, "should be non-empty"),
        ({"column": "DVID", "equal": "pca"}, "Additional properties are not allowed"),
        ({"equals": "pca"}, "'column' is a required property"),
        ({"column": "DVID", "equals": ["pca"]}, "is not of type 'string', 'number'"),
    ],
)
def test_malformed_exclude_conditions_are_refused(condition, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, {"data": {"exclude": [condition]}})
    assert "data.exclude" in str(info.value) and message in str(info.value), str(info.value)
