"""What the dose recommendations write and tell: the cohort's counts after gathering batches,
file names that patient IDs cannot make collide, the patients file's warnings and the models'
gate status in every output, the per-patient figure's legends and units, figures on request
for large cohorts, and ``ketamine-pmx recommend`` refusing a bad ``--out`` before computing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_config, save_run_posteriors

from ketamine_pmx import dosing, plots
from ketamine_pmx.cli import main as cli_main
from ketamine_pmx.data import load_patients
from ketamine_pmx.models import load_pk_spec, load_response_spec
from ketamine_pmx.simulate import oracle_pk_posterior, oracle_response, simulate_trial

PATIENTS = REPO / "data" / "new_patients.csv"
PK_SPEC = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
RESP_SPEC = load_response_spec(REPO / "models" / "response_full.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Oracle models saved as a finished run's posteriors, a config naming them, and the
    recommendation of the example patients."""
    config = make_config()
    pop = simulate_trial(config).population
    models = dosing.make_models(
        PK_SPEC,
        oracle_pk_posterior(pop, PK_SPEC, 200, jitter=0.02, seed=1),
        RESP_SPEC,
        *oracle_response(pop, RESP_SPEC, 200),
        config["response"]["endpoints"],
    )
    tmp = tmp_path_factory.mktemp("run")
    run = tmp / "results"
    save_run_posteriors(models, run)
    for fit in (f"pk/{PK_SPEC.name}", f"response/{RESP_SPEC.name}"):
        (run / fit / "gate.json").write_text(json.dumps({"gate_passed": True, "gate_failures": []}))
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(
        f"models: {{dir: {REPO / 'models'}, pk: [{PK_SPEC.name}], response: [{RESP_SPEC.name}]}}\n"
        "dosing: {pk_draws: 40}\n"
    )
    cfg = {**config["dosing"], "pk_draws": 40}
    patients = load_patients(
        PATIENTS, models.needed_covariates(), models.indications, cfg, config["data"]
    )
    result = dosing.recommend(models, patients, cfg, 3)
    return config, models, run, cfg_path, cfg, result


@pytest.fixture
def no_figures(monkeypatch):
    """No per-patient figure unless asked for (they cost time, and these tests read text)."""
    monkeypatch.setattr("ketamine_pmx.dosing.report.FIGURES_AUTO_MAX", 0)


def recommend_cli(world, patients: Path, out: Path, *extra: str) -> int:
    _, _, run, cfg_path, _, _ = world
    argv = ["recommend", "--patients", str(patients), "--run", str(run), "--config", str(cfg_path)]
    return cli_main([*argv, "--out", str(out), *extra])


def patients_file(path: Path, edit=None) -> Path:
    frame = pd.read_csv(PATIENTS, dtype=str, keep_default_na=False)
    frame = edit(frame) if edit else frame
    frame.to_csv(path, index=False)
    return path


def test_gathered_batches_count_the_whole_cohort(world, tmp_path, no_figures):
    """summary.md of the gathered batches is the one a single write of all patients gives:
    "12 patient(s)" once, not "6 patient(s)" per batch; every patient's summary follows."""
    _, _, _, _, cfg, result = world
    dosing.write_recommendation(result, tmp_path / "all", cfg)
    batches = []
    for b, ids in enumerate(np.array_split(result.recommendations["ID"].to_numpy(), 2)):
        part = dosing.Recommendation(
            result.recommendations[result.recommendations["ID"].isin(ids)],
            result.regimens[result.regimens["ID"].isin(ids)],
            result.posterior,
            result.notes,
        )
        batches.append(tmp_path / f"batch{b}")
        dosing.write_recommendation(part, batches[-1], cfg)
    (tmp_path / "gathered").mkdir()
    rec = dosing.merge_batches(batches, tmp_path / "gathered")
    summary = (tmp_path / "gathered" / "summary.md").read_text()
    assert "6 patient(s)" not in summary and summary.count("12 patient(s)") == 1
    assert summary == (tmp_path / "all" / "summary.md").read_text()
    assert summary.count("# Patient ") == 12 and len(rec) == 12
    flagged = int(rec["LIKELY_NON_RESPONDER"].map(dosing.is_true).sum())
    assert f"{flagged} flagged as likely non-responders" in summary
    assert sorted(p.name for p in (tmp_path / "gathered" / "patients").iterdir()) == sorted(
        p.name for p in (tmp_path / "all" / "patients").iterdir()
    )


def test_colliding_patient_ids_get_distinct_deterministic_files(world, tmp_path, no_figures):
    """A/1 and A_1 (one name once sanitised) and A_1 / a_1 (one file on a case-insensitive
    system) each get their own files, listed in recommendations.csv; plain IDs keep theirs."""
    ids = {"MDD-01": "A/1", "MDD-02": "A_1", "MDD-03": "a_1"}
    path = patients_file(tmp_path / "p.csv", lambda f: f.assign(ID=f["ID"].replace(ids)))
    assert recommend_cli(world, path, tmp_path / "out") == 0
    assert len({p.name.casefold() for p in (tmp_path / "out" / "patients").glob("*.md")}) == 12
    rec = dosing.read_table(tmp_path / "out" / "recommendations.csv")
    files = rec.set_index("ID")["SUMMARY_FILE"]
    assert files.str.casefold().is_unique
    for pid in ("A/1", "A_1", "a_1", "MDD-04"):
        text = (tmp_path / "out" / files[pid]).read_text()
        assert text.startswith(f"# Patient {pid} ("), (pid, files[pid])
    names = dosing.patient_file_names(["MDD-01", "A/1", "A_1", "a_1"])
    assert names["MDD-01"] == "MDD-01"
    assert len({n.casefold() for n in names.values()}) == 4
    assert names == dosing.patient_file_names(["a_1", "A_1", "A/1", "MDD-01"])  # order-free


def test_patient_warnings_reach_stderr_summary_and_the_patient(world, tmp_path, capsys, no_figures):
    """An AGE outside its plausible range (a warning, not an error) is printed, listed in
    summary.md, in the patient's summary and in the patient's WARNINGS column."""
    path = patients_file(
        tmp_path / "p.csv", lambda f: f.assign(AGE=f["AGE"].mask(f.index == 2, "5"))
    )
    assert recommend_cli(world, path, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "line 4, column AGE" in err and "[covariate-range]" in err, err
    out = tmp_path / "out"
    assert "line 4, column AGE" in (out / "summary.md").read_text()
    rec = dosing.read_table(out / "recommendations.csv").set_index("ID")
    assert "AGE 5" in rec.loc["MDD-03", "WARNINGS"] and rec["WARNINGS"].notna().sum() == 1
    text = (out / rec.loc["MDD-03", "SUMMARY_FILE"]).read_text()
    assert "**Warnings:**" in text and "AGE 5" in text and "line 4" in text
    assert "Warnings" not in (out / rec.loc["MDD-01", "SUMMARY_FILE"]).read_text()


def test_a_failed_gate_is_named_in_every_output(world, tmp_path, capsys, no_figures):
    """A reference model let past a failed gate (its gate check records the failures) is named
    with its failed checks in recommendations.csv, summary.md and each patient's summary."""
    _, _, run, *_ = world
    fail = ["R-hat 1.090 > 1.01 (omega_q[S])", "E-BFMI 0.08 < 0.3"]
    check = run / "pk" / PK_SPEC.name / "gate_check.json"
    check.write_text(
        json.dumps({"model": PK_SPEC.name, "gate_passed": False, "gate_failures": fail})
    )
    try:
        assert recommend_cli(world, PATIENTS, tmp_path / "out") == 0
    finally:
        check.unlink()
    assert "did not pass the diagnostic gate" in capsys.readouterr().err
    out = tmp_path / "out"
    rec = dosing.read_table(out / "recommendations.csv")
    assert rec["GATE"].eq(f"{PK_SPEC.name} FAILED: {'; '.join(fail)}").all(), rec["GATE"]
    summary = (out / "summary.md").read_text()
    assert "Diagnostic gate not passed" in summary and f"{PK_SPEC.name}: {fail[0]}" in summary
    for f in rec["SUMMARY_FILE"]:
        text = (out / f).read_text()
        assert "Diagnostic gate not passed" in text and fail[1] in text
    # a run whose gates passed says so
    assert recommend_cli(world, PATIENTS, tmp_path / "ok") == 0
    rec = dosing.read_table(tmp_path / "ok" / "recommendations.csv")
    assert rec["GATE"].eq("passed").all()
    assert "gate" not in (tmp_path / "ok" / "summary.md").read_text().lower()


@pytest.mark.parametrize(
    "case", ["below-a-file", "input-folder", "foreign-folder", "a-file", "proc"]
)
def test_recommend_refuses_a_bad_out_before_computing(world, tmp_path, capsys, monkeypatch, case):
    """--out under a file, the patients file's own folder, a folder of other files (it would be
    replaced as a whole), an existing file, or a place that cannot be written: exit 2 with the
    path and the rule, before any computation, and the inputs untouched."""

    def no_computation(*args, **kwargs):
        raise AssertionError("computed before the output folder was checked")

    monkeypatch.setattr(dosing, "recommend", no_computation)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    patients = patients_file(inputs / "patients.csv")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("x")
    out, rule = {
        "below-a-file": (tmp_path / "notes.txt" / "out", "is a file, not a folder"),
        "input-folder": (inputs, "holds the input"),
        "foreign-folder": (tmp_path / "other", "not recommendation outputs"),
        "a-file": (tmp_path / "notes.txt", "is a file"),
        "proc": (Path("/proc/ketamine-pmx-test/out"), "cannot write"),
    }[case]
    if case == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc file system")
    code = recommend_cli(world, patients, out)
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err and rule in err and "Traceback" not in err, err
    assert patients.read_text() == PATIENTS.read_text()
    assert (tmp_path / "other" / "data.csv").is_file()


def test_a_patient_capped_below_every_regimen_gets_a_row_not_an_abort(world, tmp_path, capsys):
    """MAX_DOSE_MG_KG 0.05 lies below every MDD regimen: that patient's row says why, the others
    are recommended, and the outputs say so; no traceback."""
    path = patients_file(
        tmp_path / "p.csv",
        lambda f: f.assign(MAX_DOSE_MG_KG=f["MAX_DOSE_MG_KG"].mask(f["ID"] == "MDD-01", "0.05")),
    )
    assert recommend_cli(world, path, tmp_path / "out") == 0, capsys.readouterr().err
    out = tmp_path / "out"
    rec = dosing.read_table(out / "recommendations.csv").set_index("ID")
    assert not dosing.is_true(rec.loc["MDD-01", "RECOMMENDED"])
    assert (
        "caps" in rec.loc["MDD-01", "STATUS"] and rec["RECOMMENDED"].map(dosing.is_true).sum() == 11
    )
    assert "**No regimen recommended:**" in (out / rec.loc["MDD-01", "SUMMARY_FILE"]).read_text()
    assert "1 no regimen within the patient's caps" in (out / "summary.md").read_text()
    assert pd.isna(rec.loc["MDD-01", "FIGURE_FILE"]) and rec["FIGURE_FILE"].notna().sum() == 11


def test_figures_of_large_cohorts_only_on_request(world, tmp_path, monkeypatch):
    """Above FIGURES_AUTO_MAX patients no figure is drawn unless asked (--figures all); the
    summaries and tables are written either way."""
    monkeypatch.setattr("ketamine_pmx.dosing.report.FIGURES_AUTO_MAX", 5)
    assert recommend_cli(world, PATIENTS, tmp_path / "auto") == 0
    assert not list((tmp_path / "auto" / "patients").glob("*.png"))
    rec = dosing.read_table(tmp_path / "auto" / "recommendations.csv")
    assert (
        rec["FIGURE_FILE"].isna().all()
        and len(list((tmp_path / "auto").glob("patients/*.md"))) == 12
    )
    assert recommend_cli(world, PATIENTS, tmp_path / "all", "--figures", "all") == 0
    rec = dosing.read_table(tmp_path / "all" / "recommendations.csv")
    assert all((tmp_path / "all" / f).is_file() for f in rec["FIGURE_FILE"])


def test_dose_figure_has_legends_and_units(world):
    """Markers and reference lines are explained in legends with units (no "(^)"/"(s)" codes),
    and every axis is labelled with its unit or quantity."""
    _, _, _, _, cfg, result = world
    rec = result.recommendations.iloc[0]
    fig = plots.dose_recommendation(
        result.regimens[result.regimens["ID"] == rec["ID"]], rec, cfg["safety"]
    )
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [
        ax.get_ylabel() for ax in fig.axes
    ]
    assert not any("(^)" in t or "(s)" in t for t in texts)
    top, bottom = fig.axes[0], fig.axes[1]
    assert "mg/kg" in bottom.get_xlabel() and top.get_legend() and bottom.get_legend()
    legend = [t.get_text() for t in bottom.get_legend().get_texts()]
    assert any("ng/mL" in t and "peak" in t for t in legend)
    assert any("ng·h/mL" in t and "AUC" in t for t in legend)
    assert any("tolerated" in t for t in legend)
    assert "recommended" in [t.get_text() for t in top.get_legend().get_texts()]
