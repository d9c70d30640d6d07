"""End to end: the Snakemake DAG and the CLI on smoke-sized runs in temporary directories."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from html import escape as html_escape

import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO, snakemake_command
from conftest import run_snakemake as _snakemake

from ketamine_pmx.cli import main

pytestmark = pytest.mark.workflow


def test_dry_run_shows_the_dag(tmp_path):
    proc = _snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stderr
    assert "simulate_trial" in proc.stdout and "validate_data" in proc.stdout


def _dry_run_resources(text: str, rule: str) -> str:
    """The resources line of the first job of ``rule`` in ``snakemake -n`` output."""
    block = text[text.index(f"rule {rule}:") :]
    return re.search(r"^    resources: (.*)$", block, re.MULTILINE).group(1)


def test_rules_ask_for_their_own_resources_and_a_profile_changes_them(tmp_path):
    """Each rule states its resources for the default run; the smoke profile (set-resources)
    lowers them, and names only rules of the workflow (a misspelt rule would be ignored)."""
    from ketamine_pmx.layout import OUTPUTS

    profile = REPO / "workflow" / "profiles" / "smoke"
    plain = _snakemake(tmp_path, "-n")
    smoke = _snakemake(tmp_path, "-n", "--workflow-profile", str(profile))
    assert plain.returncode == 0 and smoke.returncode == 0, plain.stderr + smoke.stderr
    assert "mem_mb=8000" in _dry_run_resources(plain.stdout, "fit_pk")
    assert "runtime=120" in _dry_run_resources(plain.stdout, "fit_pk")
    assert "mem_mb=4000" in _dry_run_resources(smoke.stdout, "fit_pk")
    assert "mem_mb=2000" in _dry_run_resources(smoke.stdout, "recommend_batch")
    overrides = yaml.safe_load((profile / "config.yaml").read_text())["set-resources"]
    assert set(overrides) <= set(OUTPUTS)


def test_smoke_run_writes_the_validated_dataset_and_summary(smoke_run):
    clean = pd.read_csv(smoke_run / "data" / "clean.csv", na_values=["."])
    summary = json.loads((smoke_run / "data" / "summary.json").read_text())
    assert summary["subjects"] == 9 == clean["ID"].nunique()
    assert set(summary["groups"]) == {"MDD", "CRPS_OUT", "CRPS_IN"}
    assert 0 < summary["blq_share_concentrations"] < 0.5
    assert "BLQ share" in (smoke_run / "data" / "summary.md").read_text()
    assert (smoke_run / "data" / "overview.png").read_bytes()[:4] == b"\x89PNG"
    assert (smoke_run / "logs" / "simulate_trial.log").read_text().startswith("simulated trial")
    assert (smoke_run / "benchmarks" / "simulate_trial.tsv").exists()


def test_smoke_run_fits_every_pk_model_and_gates_it(smoke_run):
    import arviz as az

    from ketamine_pmx.config import load_config, sampler_settings

    # the run's working directory has no config/config.yaml: Snakemake read smoke.yaml alone
    pk_sampler = sampler_settings(load_config(REPO / "config" / "smoke.yaml"), "pk")

    for model in ("pk_2cmt_metab", "pk_1cmt_metab"):
        folder = smoke_run / "pk" / model
        idata = az.from_netcdf(folder / "posterior.nc")
        assert {"posterior", "log_likelihood", "constant_data", "observed_data"} <= set(
            idata.groups()
        )
        assert idata.posterior.attrs["model"] == model
        assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 200
        # the PK family's settings (smoke.yaml's sampler.pk over its shared sampler)
        assert json.loads(idata.posterior.attrs["sampler_settings"]) == pk_sampler
        table = pd.read_csv(folder / "diagnostics.csv")
        assert {"r_hat", "ess_bulk", "ess_tail"} <= set(table.columns)
        gate = json.loads((folder / "gate.json").read_text())
        assert {"gate_passed", "gate_failures", "divergences", "e_bfmi_min"} <= set(gate)
        log = (smoke_run / "logs" / "diagnose_pk" / f"{model}.log").read_text()
        assert "diagnostic gate" in log
        # the gate enforced on those files: passed, or failed and let through by the config
        check = json.loads((folder / "gate_check.json").read_text())
        assert check["gate_passed"] == gate["gate_passed"]
        assert check["allowed_past_failed_gate"] == (not gate["gate_passed"])


def test_a_failing_gate_stops_the_run_and_keeps_its_diagnostics(smoke_run, tmp_path):
    """An ESS no fit reaches, with the gate enforced: the run stops, and the diagnostics and
    gate.json the message points to are kept (only the gate check is not written)."""
    work = tmp_path / "work"
    shutil.copytree(smoke_run.parents[1], work, symlinks=True)
    extra = tmp_path / "strict.yaml"
    extra.write_text(yaml.safe_dump({"gate": {"allow_failure": False, "ess_min": 10**6}}))
    folder = work / "results" / "smoke" / "pk" / "pk_2cmt_metab"
    before = (folder / "posterior.nc").stat().st_mtime_ns
    proc = _snakemake(work, configfiles=("config/smoke.yaml", extra))
    assert proc.returncode != 0
    text = proc.stderr + proc.stdout
    assert "diagnostic gate FAILED" in text and "ess_bulk" in text
    assert "pk/pk_2cmt_metab/diagnostics.csv" in text and "pk/pk_2cmt_metab/gate.json" in text
    gate = json.loads((folder / "gate.json").read_text())  # rewritten with the new threshold
    assert not gate["gate_passed"] and any("1000000" in f for f in gate["gate_failures"])
    assert pd.read_csv(folder / "diagnostics.csv")["ess_bulk"].notna().all()
    assert not (folder / "gate_check.json").exists()
    assert (folder / "posterior.nc").stat().st_mtime_ns == before  # the fit was not rerun


def test_smoke_run_computes_exposures_fits_compares_and_summarises_response(smoke_run):
    import xarray as xr

    from ketamine_pmx.inference import load_idata

    exposures = xr.open_dataset(smoke_run / "exposure" / "exposures.nc")
    assert exposures["exposure"].dims == ("chain", "draw", "subject", "metric")
    assert {"AUC_HNK", "CMAX_KET", "AUC_S_NK"} <= set(exposures["metric"].values)
    assert exposures.sizes["subject"] == 9 and (exposures["exposure"] > 0).all()
    exposures.close()
    summary = pd.read_csv(smoke_run / "exposure" / "exposure_summary.csv")
    assert {"ID", "metric", "median", "q05", "q95", "log_mean", "log_sd"} <= set(summary.columns)
    models = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())["models"]["response"]
    for model in models:
        idata = load_idata(smoke_run / "response" / model / "posterior.nc")
        assert set(idata.log_likelihood.data_vars) == {"responder", "pct_change"}
        assert idata.log_likelihood.sizes["patient"] == 9
        assert json.loads((smoke_run / "response" / model / "gate.json").read_text())["draws"]
    for outcome in ("responder", "pct_change"):
        table = pd.read_csv(smoke_run / "compare" / f"response_{outcome}.csv")
        assert sorted(table["model"]) == sorted(models)
        assert {"elpd_loo", "se", "elpd_diff", "dse", "weight", "n_k_over"} <= set(table.columns)
        assert (smoke_run / "compare" / f"response_{outcome}.png").read_bytes()[:4] == b"\x89PNG"
    pk = pd.read_csv(smoke_run / "compare" / "pk.csv")
    assert sorted(pk["model"]) == ["pk_1cmt_metab", "pk_2cmt_metab"]
    effects = pd.read_csv(smoke_run / "effects" / "biomarker_effects.csv")
    full = effects[(effects["model"] == "response_full") & (effects["outcome"] == "responder")]
    assert set(full["predictor"]) == {"AUC_HNK", "DSER", "MG"}
    assert set(full["scope"]) == {"all", "MDD", "CRPS"}
    assert full["p_hypothesised_direction"].between(0, 1).all()
    recovery = pd.read_csv(smoke_run / "effects" / "recovery.csv")
    assert "b_dser_per_um[MDD]" in set(recovery["parameter"])
    assert (smoke_run / "effects" / "forest_responder.png").read_bytes()[:4] == b"\x89PNG"
    for model in models:
        folder = smoke_run / "checks" / "response" / model
        groups = pd.read_csv(folder / "response_groups.csv")
        assert {"overall", "indication", "D-serine tertile", "exposure tertile"} <= set(
            groups["grouping"]
        )
        assert {"responder", "pct_change"} == set(groups["outcome"])
        for name in ("response_groups.png", "calibration.png", "loo_pit.png"):
            assert (folder / name).read_bytes()[:4] == b"\x89PNG", (model, name)


def test_pk_checks_pass_the_true_structure_and_flag_the_one_compartment_model(smoke_run):
    """pcVPC of the parent: the two-compartment model (the simulator's structure) keeps its
    early observed percentiles inside the simulated intervals, the one-compartment model not."""
    early = {}
    for model in ("pk_2cmt_metab", "pk_1cmt_metab"):
        folder = smoke_run / "checks" / "pk" / model
        for name in ("vpc.png", "pcvpc.png", "gof.png", "eta_covariates.png"):
            assert (folder / name).read_bytes()[:4] == b"\x89PNG", (model, name)
        summary = pd.read_csv(folder / "vpc_summary.csv")
        parent = summary[(summary["kind"] == "pcvpc") & summary["analyte"].str.endswith("KET")]
        early[model] = parent["share_inside_early"].mean()
        gof = pd.read_csv(folder / "gof.csv")
        assert {"PRED", "IPRED", "NPD"} <= set(gof.columns) and gof["NPD"].notna().all()
    assert early["pk_2cmt_metab"] >= 0.8, early
    assert early["pk_1cmt_metab"] < 0.8 and early["pk_1cmt_metab"] < early["pk_2cmt_metab"]


def test_smoke_run_is_reproducible(smoke_run, tmp_path):
    proc = _snakemake(tmp_path, "--until", "simulate_trial")
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = tmp_path / "results" / "smoke" / "simulated" / "trial.csv"
    assert again.read_bytes() == (smoke_run / "simulated" / "trial.csv").read_bytes()


def test_user_dataset_replaces_the_simulated_trial(smoke_run, tmp_path):
    user = tmp_path / "my_study.csv"
    shutil.copy(smoke_run / "simulated" / "trial.csv", user)
    before = user.read_bytes()
    extra = tmp_path / "user.yaml"
    extra.write_text(yaml.safe_dump({"data": {"path": str(user)}}))
    proc = _snakemake(
        tmp_path, "--until", "validate_data", configfiles=("config/smoke.yaml", extra)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "results" / "smoke" / "simulated").exists()  # nothing simulated
    summary = json.loads((tmp_path / "results" / "smoke" / "data" / "summary.json").read_text())
    assert summary["source"] == str(user)
    assert user.read_bytes() == before  # inputs are never modified


def test_malformed_user_dataset_stops_the_run_with_located_messages(smoke_run, tmp_path):
    frame = pd.read_csv(smoke_run / "simulated" / "trial.csv", dtype=str, keep_default_na=False)
    frame.loc[4, "TIME"] = "-1"
    frame.loc[9, "WT"] = "400"
    user = tmp_path / "bad.csv"
    frame.to_csv(user, index=False)
    extra = tmp_path / "user.yaml"
    extra.write_text(yaml.safe_dump({"data": {"path": str(user)}}))
    proc = _snakemake(
        tmp_path, "--until", "validate_data", configfiles=("config/smoke.yaml", extra)
    )
    assert proc.returncode != 0
    log = (tmp_path / "results" / "smoke" / "logs" / "validate_data.log").read_text()
    assert "line 6, column TIME" in log and "[time-invalid]" in log
    assert "column WT" in log and "[covariate-range]" in log
    assert not (tmp_path / "results" / "smoke" / "data" / "clean.csv").exists()


def test_invalid_config_fails_before_any_job(tmp_path):
    extra = tmp_path / "bad.yaml"
    extra.write_text(yaml.safe_dump({"simulation": {"arms": {"MDD": -3}}}))
    proc = _snakemake(tmp_path, "-n", configfiles=("config/smoke.yaml", extra))
    assert proc.returncode != 0
    assert "simulation" in proc.stdout + proc.stderr and "-3" in proc.stdout + proc.stderr


def test_cli_simulate_and_validate(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw["simulation"]["parameters"] = str(REPO / "data" / "truth" / "ketamine_virtual_trial.yaml")
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "sim")]) == 0
    out = capsys.readouterr().out
    assert "9 subjects" in out and "responders" in out
    data = tmp_path / "sim" / "trial.csv"
    assert main(["validate", str(data), "--config", str(cfg), "--out", str(tmp_path / "val")]) == 0
    assert "valid (9 subjects" in capsys.readouterr().out
    assert (tmp_path / "val" / "clean.csv").exists()


def test_cli_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("simulation: {arms: {MDD: many}}\n")
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert "simulation.arms.MDD" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_console_script_is_installed():
    exe = shutil.which("ketamine-pmx") or str(REPO / ".venv" / "bin" / "ketamine-pmx")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "simulate" in proc.stdout and "validate" in proc.stdout


# Lints the workflow keeps on purpose, with the reason (README, "Workflow quality").
ACCEPTED_LINTS = {
    # Every rule runs this project's own package, whose environment is pyproject.toml (installed
    # with pip, as the README says); a per-rule conda env would have to install the package
    # itself from the checkout, which a conda env file cannot say portably.
    "Specify a conda environment or container for each rule.",
}


def parse_lints(text: str) -> list[tuple[str, str]]:
    """(target, lint title) of every lint in ``snakemake --lint`` text output."""
    lints, target = [], None
    for line in text.splitlines():
        head = re.match(r"Lints for (.+?)(?: \(line \d+, .*\))?:$", line)
        if head:
            target = head.group(1)
            continue
        item = re.match(r"    \* (.+?):$", line)
        if item and target is not None:
            lints.append((target, item.group(1)))
    return lints


def test_parse_lints():
    text = (
        "Lints for snakefile /x/common.smk:\n"
        "    * Mixed rules and functions in same snakefile.:\n"
        "      Small one-liner functions ... e.g. 'rules/common.smk'. This makes:\n"
        "Lints for rule fit_pk (line 5, /x/pk.smk):\n"
        "    * Specify a conda environment or container for each rule.:\n"
        "      This way, the used software ...\n"
    )
    assert parse_lints(text) == [
        ("snakefile /x/common.smk", "Mixed rules and functions in same snakefile."),
        ("rule fit_pk", "Specify a conda environment or container for each rule."),
    ]


def test_lint_is_clean(tmp_path):
    """snakemake --lint finds nothing beyond the accepted lints (and finds every rule)."""
    proc = _snakemake(tmp_path, "--lint")
    text = proc.stdout + proc.stderr
    lints = parse_lints(text)
    unexpected = [(target, title) for target, title in lints if title not in ACCEPTED_LINTS]
    assert not unexpected, text
    if not lints:
        assert proc.returncode == 0 and "good condition" in text, text


def _check_readable(path):
    """Open a result file the way its readers do (a truncated file fails here)."""
    if path.suffix == ".csv":
        pd.read_csv(path, na_values=["."])
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".nc":
        xr.load_dataset(path)
    elif path.suffix == ".png":
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # two fits of the reference PK model: about 4 minutes on 2 busy cores
def test_a_killed_run_leaves_no_half_written_output_and_resumes(smoke_run, tmp_path):
    """Kill -9 the whole process group while a PK fit runs, then resume with
    --rerun-incomplete: the killed job's output is absent (never half-written), every output
    present is readable, and the resumed run gives the uninterrupted run's numbers."""
    work = tmp_path / "work"
    model_dir = "results/smoke/pk/pk_2cmt_metab"
    target = f"{model_dir}/diagnostics.csv"
    fit_log = work / "results" / "smoke" / "logs" / "fit_pk" / "pk_2cmt_metab.log"
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(
            snakemake_command(work, target), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: snakemake and its jobs
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while not fit_log.exists():  # the fit's script opens its log first thing
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "fit_pk did not start"
                time.sleep(0.5)
            # inside the fit (importing, building or compiling the model), far from its end:
            # with the compiled model in the machine's cache the whole smoke fit takes ~15 s
            time.sleep(3)
            assert proc.poll() is None, "the fit ended before it could be killed"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    results = work / "results" / "smoke"
    assert not (work / model_dir / "posterior.nc").exists()
    outputs = [
        p
        for p in results.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.parts[-2] != "logs"
    ]
    assert outputs, "nothing before the fit was written"
    for path in outputs:
        _check_readable(path)
    # The lock of the killed run stays behind (kill -9 gives snakemake no chance to remove it).
    assert _snakemake(work, "--unlock").returncode == 0
    proc = _snakemake(work, target, "--rerun-incomplete")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = pd.read_csv(work / target, na_values=["."])
    reference = pd.read_csv(smoke_run / "pk" / "pk_2cmt_metab" / "diagnostics.csv", na_values=["."])
    pd.testing.assert_frame_equal(resumed, reference)  # same config and seeds: same numbers


# The report's sections (rules' report(category=...)): one per stage, numbered in reading order
# (a later stage adds its own, e.g. "7. Dosing").
REPORT_SECTIONS = {
    "1. Data summary": ["data/summary.html", "data/overview.png"],
    "2. PK diagnostics and VPCs": [
        "pk/{pk}/diagnostics.html",
        "checks/pk/{pk}/vpc.png",
        "checks/pk/{pk}/pcvpc.png",
        "checks/pk/{pk}/vpc_summary.html",
        "checks/pk/{pk}/gof.png",
        "checks/pk/{pk}/gof_summary.html",
        "checks/pk/{pk}/eta_covariates.png",
        "checks/pk/{pk}/eta_covariates.html",
    ],
    "3. Exposures": ["exposure/exposure_summary.html", "exposure/exposures.png"],
    "4. Model comparison": [
        "compare/response_responder.html",
        "compare/response_pct_change.html",
        "compare/pk.html",
        "compare/response_responder.png",
    ],
    "5. Biomarker effects": [
        "effects/biomarker_effects.html",
        "effects/recovery.html",
        "effects/forest_responder.png",
    ],
    "6. Response checks": [
        "response/{resp}/diagnostics.html",
        "checks/response/{resp}/response_groups.png",
        "checks/response/{resp}/response_groups.html",
        "checks/response/{resp}/calibration.png",
        "checks/response/{resp}/loo_pit.png",
    ],
    "7. Dosing": [
        "dosing/recommendations.html",
        "dosing/summary.html",
        "dosing/trial_summary.html",
        "dosing/trial.png",
    ],
}


def report_results(html: str) -> dict:
    """The report's results (path -> name, mime type, data URI, ...) from its embedded data."""
    start = html.index("var results = {") + len("var results = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


def report_page(results: dict, path: str) -> str:
    """The decoded content of one report item (a base64 data URI)."""
    import base64

    return base64.b64decode(results[path]["data_uri"].split("base64,", 1)[1]).decode()


def test_report_has_a_section_per_stage(smoke_run, tmp_path):
    """snakemake --report after the smoke run: every stage's section, per model where the stage
    is per model, holding that stage's figures and tables, and captions that render cleanly."""
    report = tmp_path / "report.html"
    proc = _snakemake(smoke_run.parents[1], "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(ERROR/" not in proc.stderr and "(WARNING/" not in proc.stderr, proc.stderr  # docutils
    html = report.read_text()
    found = re.search(r"var categories = (\{.*?\});\s*</script>", html, re.S)
    assert found, "no categories in the report"
    sections = json.loads(found.group(1))
    assert set(REPORT_SECTIONS) <= set(sections)
    numbers = [name.split(".")[0] for name in sections]
    assert len(set(numbers)) == len(numbers), sorted(sections)  # the menu's order is by name
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())["models"]["response"]
    pk = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]["pk"]
    assert set(sections["2. PK diagnostics and VPCs"]) == set(pk)  # one subsection per model
    assert set(sections["6. Response checks"]) == set(smoke)
    for name, files in REPORT_SECTIONS.items():
        listed = {f for sub in sections[name].values() for f in sub}
        for pattern in files:
            for p in {pattern.format(pk=m, resp=r) for m in pk for r in smoke}:
                assert f"results/smoke/{p}" in listed, (name, p)
    # Tables are shown as tables: every item is a figure or an HTML page, none a download.
    results = report_results(html)
    assert {r["mime_type"] for r in results.values()} <= {"image/png", "text/html"}, {
        p: r["mime_type"] for p, r in results.items()
    }
    recs = report_page(results, "results/smoke/dosing/recommendations.html")
    ids = pd.read_csv(smoke_run / "dosing" / "recommendations.csv", dtype={"ID": str})["ID"]
    assert "<table" in recs and all(f"<td>{pid}</td>" in recs for pid in ids)
    assert "<table" in report_page(results, "results/smoke/data/summary.html")
    # A model let past a failed gate (smoke.yaml: gate.allow_failure) says so where it is read.
    for stage, model in [("pk", m) for m in pk] + [("response", r) for r in smoke]:
        gate = json.loads((smoke_run / stage / model / "gate.json").read_text())
        page = report_page(results, f"results/smoke/{stage}/{model}/diagnostics.html")
        assert "<table" in page
        if gate["gate_passed"]:
            assert f"Diagnostic gate passed for {model}" in page
        else:
            assert f"Diagnostic gate FAILED for {model}" in page
            assert "the config allows it (gate.allow_failure)" in page
            assert all(html_escape(f) in page for f in gate["gate_failures"])
    reference = json.loads((smoke_run / "pk" / pk[0] / "gate.json").read_text())
    if not reference["gate_passed"]:
        assert f"Diagnostic gate FAILED for {pk[0]}" in recs


def test_smoke_run_recommends_doses_and_runs_the_dosing_trial(smoke_run):
    """The dosing stage: every patient of the example file gets a row (the two with test-dose
    concentrations through importance sampling), a plot and a summary; the virtual trial
    scores guided and standard dosing on the simulator's truth."""
    from ketamine_pmx.dosing import read_table

    rec = read_table(smoke_run / "dosing" / "recommendations.csv")
    patients = read_table(REPO / "data" / "new_patients.csv")
    assert list(rec["ID"]) == list(patients["ID"])
    measured = rec.set_index("ID").loc[["MDD-03", "CRPS-02"], "METHOD"]
    assert set(measured) <= {"importance", "nuts"}
    assert (rec.loc[~rec["ID"].isin(["MDD-03", "CRPS-02"]), "METHOD"] == "population").all()
    assert rec["RECOMMENDED"].all()
    assert rec["P_RESPONSE"].between(0, 1).all()
    for pid in rec["ID"]:
        assert (smoke_run / "dosing" / "patients" / f"{pid}.png").is_file()
        assert "not medical advice" in (smoke_run / "dosing" / "patients" / f"{pid}.md").read_text()
    assert not (smoke_run / "dosing" / "batches").exists()  # temp() batch outputs are gone
    trial = read_table(smoke_run / "dosing" / "trial_summary.csv")
    assert {"standard", "guided", "guided (true model)"} <= set(trial["STRATEGY"])
    assert (smoke_run / "dosing" / "trial.png").is_file()
