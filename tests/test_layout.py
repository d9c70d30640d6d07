"""The results layout: one table that the workflow's rules, the results API and the CLI read."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from ketamine_pmx import layout, results


def test_path_fills_the_placeholders_it_is_given_and_keeps_the_others():
    assert layout.path("fit_pk", "posterior") == "pk/{pk_model}/posterior.nc"
    assert layout.path("fit_pk", "posterior", pk_model="pk_a") == "pk/pk_a/posterior.nc"
    assert (
        layout.path("compare_models", "response", outcome="responder")
        == "compare/response_responder.csv"
    )
    assert layout.placeholders(layout.OUTPUTS["recommend_batch"]["batch"]) == ["batch"]


def test_path_refuses_an_unknown_output_or_placeholder():
    with pytest.raises(KeyError, match=r"fit_pk\.draws"):
        layout.path("fit_pk", "draws")
    with pytest.raises(ValueError, match="resp_model"):
        layout.path("fit_pk", "posterior", resp_model="response_full")


def test_stage_folders_come_from_the_outputs_in_stage_order():
    assert layout.STAGE_DIRS == (
        "simulated",
        "data",
        "pk",
        "exposure",
        "response",
        "compare",
        "effects",
        "checks",
        "dosing",
    )
    assert results.STAGE_DIRS == layout.STAGE_DIRS


def _rule_outputs() -> set[tuple[str, str]]:
    """(rule, output) of every ``result_path`` call in the workflow's rules, each checked to
    sit in the rule it names."""
    found = set()
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text(encoding="utf-8").splitlines():
            head = re.match(r"(?:local)?rule (\w+):", line)
            if head:
                rule = head.group(1)
            for name, output in re.findall(r'result_path\(\s*"(\w+)",\s*"(\w+)"', line):
                assert name == rule, f"{smk.name}: rule {rule} writes {name}.{output}"
                found.add((name, output))
    return found


def test_every_output_of_the_layout_is_written_by_its_rule():
    table = {(rule, output) for rule, outputs in layout.OUTPUTS.items() for output in outputs}
    assert _rule_outputs() == table


def test_the_results_api_reads_the_layout():
    """Every file of ``results.FILES`` is a rule's output in the layout, at the path that
    notebooks and users have read so far."""
    paths = {name: entry.path for name, entry in results.FILES.items()}
    assert paths == {
        "pk": "pk/{key}/posterior.nc",
        "response": "response/{key}/posterior.nc",
        "exposures": "exposure/exposures.nc",
        "data": "data/clean.csv",
        "data_summary": "data/summary.json",
        "truth_subjects": "simulated/truth_subjects.csv",
        "truth_population": "simulated/truth_population.json",
        "pk_diagnostics": "pk/{key}/diagnostics.csv",
        "pk_gate": "pk/{key}/gate.json",
        "pk_gate_check": "pk/{key}/gate_check.json",
        "vpc": "checks/pk/{key}/vpc.csv",
        "vpc_summary": "checks/pk/{key}/vpc_summary.csv",
        "gof": "checks/pk/{key}/gof.csv",
        "gof_summary": "checks/pk/{key}/gof_summary.csv",
        "eta_covariates": "checks/pk/{key}/eta_covariates.csv",
        "exposure_summary": "exposure/exposure_summary.csv",
        "response_diagnostics": "response/{key}/diagnostics.csv",
        "response_gate": "response/{key}/gate.json",
        "response_gate_check": "response/{key}/gate_check.json",
        "comparison": "compare/response_{key}.csv",
        "comparison_pk": "compare/pk.csv",
        "pareto_k": "compare/pareto_k.csv",
        "effects": "effects/biomarker_effects.csv",
        "recovery": "effects/recovery.csv",
        "response_groups": "checks/response/{key}/response_groups.csv",
        "calibration": "checks/response/{key}/calibration.csv",
        "loo_pit": "checks/response/{key}/loo_pit.csv",
        "recommendations": "dosing/recommendations.csv",
        "regimens": "dosing/regimens.csv",
        "dosing_trial": "dosing/trial_summary.csv",
        "dosing_trial_patients": "dosing/trial_patients.csv",
    }
    layout_paths = {
        re.sub(r"\{\w+\}", "{key}", p)
        for outputs in layout.OUTPUTS.values()
        for p in outputs.values()
    }
    assert set(paths.values()) <= layout_paths
