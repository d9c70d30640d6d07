"""Where a run's files lie: every output of the workflow, relative to the results directory.

One table, read by the workflow's rules (``workflow/rules/common.smk``: each rule's outputs),
by :mod:`ketamine_pmx.results` (the files a notebook reads) and by the CLI (the reference fits
``ketamine-pmx recommend`` reads from a finished run). :data:`OUTPUTS` holds, for each rule,
its named outputs as the rule names them (``rules.fit_pk.output.posterior`` is
``OUTPUTS["fit_pk"]["posterior"]`` under the results directory); the files a rule writes per
outcome are one entry, whose ``{outcome}`` the rule fills in for each of its outputs.

Paths hold placeholders: ``{pk_model}``, ``{resp_model}`` and ``{batch}`` are the rules'
wildcards, ``{outcome}`` the response outcome (``responder`` or ``pct_change``). :func:`path`
fills in the ones it is given.
"""

from __future__ import annotations

import re

#: Each rule's named outputs, in the workflow's order of stages.
OUTPUTS: dict[str, dict[str, str]] = {
    "simulate_trial": {
        "data": "simulated/trial.csv",
        "subjects": "simulated/truth_subjects.csv",
        "population": "simulated/truth_population.json",
    },
    "validate_data": {
        "clean": "data/clean.csv",
        "summary_json": "data/summary.json",
        "summary_md": "data/summary.md",
        "summary_page": "data/summary.html",
        "overview": "data/overview.png",
    },
    "fit_pk": {"posterior": "pk/{pk_model}/posterior.nc"},
    "diagnose_pk": {
        "table": "pk/{pk_model}/diagnostics.csv",
        "gate": "pk/{pk_model}/gate.json",
    },
    "gate_pk": {
        "check": "pk/{pk_model}/gate_check.json",
        "page": "pk/{pk_model}/diagnostics.html",
    },
    "exposures": {
        "draws": "exposure/exposures.nc",
        "summary": "exposure/exposure_summary.csv",
        "summary_page": "exposure/exposure_summary.html",
        "figure": "exposure/exposures.png",
    },
    "fit_response": {
        "posterior": "response/{resp_model}/posterior.nc",
        "diagnostics": "response/{resp_model}/diagnostics.csv",
        "gate": "response/{resp_model}/gate.json",
    },
    "gate_response": {
        "check": "response/{resp_model}/gate_check.json",
        "page": "response/{resp_model}/diagnostics.html",
    },
    "compare_models": {
        "response": "compare/response_{outcome}.csv",
        "response_page": "compare/response_{outcome}.html",
        "figure_response": "compare/response_{outcome}.png",
        "pk": "compare/pk.csv",
        "pk_page": "compare/pk.html",
        "figure_pk": "compare/pk.png",
        "pareto_k": "compare/pareto_k.csv",
    },
    "biomarker_effects": {
        "table": "effects/biomarker_effects.csv",
        "table_page": "effects/biomarker_effects.html",
        "forest": "effects/forest_{outcome}.png",
        "recovery": "effects/recovery.csv",
        "recovery_page": "effects/recovery.html",
    },
    "ppc_pk": {
        "vpc": "checks/pk/{pk_model}/vpc.png",
        "pcvpc": "checks/pk/{pk_model}/pcvpc.png",
        "vpc_table": "checks/pk/{pk_model}/vpc.csv",
        "vpc_summary": "checks/pk/{pk_model}/vpc_summary.csv",
        "vpc_summary_page": "checks/pk/{pk_model}/vpc_summary.html",
        "gof": "checks/pk/{pk_model}/gof.png",
        "gof_table": "checks/pk/{pk_model}/gof.csv",
        "gof_summary": "checks/pk/{pk_model}/gof_summary.csv",
        "gof_summary_page": "checks/pk/{pk_model}/gof_summary.html",
        "etas": "checks/pk/{pk_model}/eta_covariates.png",
        "eta_summary": "checks/pk/{pk_model}/eta_covariates.csv",
        "eta_summary_page": "checks/pk/{pk_model}/eta_covariates.html",
    },
    "ppc_response": {
        "groups": "checks/response/{resp_model}/response_groups.png",
        "groups_pct": "checks/response/{resp_model}/pct_change_groups.png",
        "groups_table": "checks/response/{resp_model}/response_groups.csv",
        "groups_page": "checks/response/{resp_model}/response_groups.html",
        "calibration": "checks/response/{resp_model}/calibration.png",
        "calibration_table": "checks/response/{resp_model}/calibration.csv",
        "loo_pit": "checks/response/{resp_model}/loo_pit.png",
        "loo_pit_table": "checks/response/{resp_model}/loo_pit.csv",
    },
    "recommend_batch": {"batch": "dosing/batches/{batch}"},
    "recommend_doses": {
        "recommendations": "dosing/recommendations.csv",
        "regimens": "dosing/regimens.csv",
        "summary": "dosing/summary.md",
        "notes": "dosing/notes.json",
        "patients": "dosing/patients",
    },
    "dosing_trial": {
        "patients": "dosing/trial_patients.csv",
        "summary": "dosing/trial_summary.csv",
        "figure": "dosing/trial.png",
    },
    "dosing_pages": {
        "recommendations": "dosing/recommendations.html",
        "summary": "dosing/summary.html",
    },
    "trial_page": {"summary": "dosing/trial_summary.html"},
}

#: The stage folders of a results directory (a results directory holds at least one).
STAGE_DIRS: tuple[str, ...] = tuple(
    dict.fromkeys(p.split("/", 1)[0] for outputs in OUTPUTS.values() for p in outputs.values())
)

#: Where ``ketamine-pmx recommend --run DIR`` writes in DIR unless given ``--out``.
CLI_RECOMMENDATIONS = "dosing/cli"

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def placeholders(template: str) -> list[str]:
    """The placeholders of a path of :data:`OUTPUTS` (``pk_model``, ``outcome``, ...)."""
    return _PLACEHOLDER.findall(template)


def path(rule: str, output: str, **fill: str) -> str:
    """The path of ``rule``'s ``output`` relative to the results directory, with the
    placeholders named in ``fill`` filled in; the others stay (Snakemake's wildcards).

    >>> path("fit_pk", "posterior", pk_model="pk_2cmt_metab")
    'pk/pk_2cmt_metab/posterior.nc'
    >>> path("fit_pk", "posterior")
    'pk/{pk_model}/posterior.nc'
    """
    try:
        template = OUTPUTS[rule][output]
    except KeyError:
        known = ", ".join(OUTPUTS.get(rule, OUTPUTS))
        raise KeyError(
            f"no output {rule}.{output} in the results layout (known: {known})"
        ) from None
    unknown = set(fill) - set(placeholders(template))
    if unknown:
        raise ValueError(f"{rule}.{output} ({template}) has no placeholder {sorted(unknown)}")
    return _PLACEHOLDER.sub(lambda m: str(fill.get(m.group(1), m.group(0))), template)


__all__ = ["CLI_RECOMMENDATIONS", "OUTPUTS", "STAGE_DIRS", "path", "placeholders"]
