"""A finished run's results, for notebooks and scripts: ``results.load(run_dir)``.

``run_dir`` is the run's results directory, the config's ``results_dir`` (``results`` for the
default config, ``results/smoke`` for the smoke run). The workflow's rules lay it out as
:mod:`ketamine_pmx.layout` says, the one table of the layout that :data:`FILES` reads too::

    simulated/truth_*                          simulate_trial (simulated data only)
    data/clean.csv, summary.json               validate_data
    pk/{model}/posterior.nc                    fit_pk
    pk/{model}/diagnostics.csv, gate.json      diagnose_pk
    pk/{model}/gate_check.json                 gate_pk (the gate as enforced)
    exposure/exposures.nc, ...                 exposures (reference PK model)
    response/{model}/posterior.nc, ...         fit_response
    compare/response_{outcome}.csv, pk.csv     compare_models
    effects/biomarker_effects.csv, ...         biomarker_effects
    checks/pk/{model}/*.csv                    ppc_pk (VPC, GOF, random effects)
    checks/response/{model}/*.csv              ppc_response
    dosing/recommendations.csv, regimens.csv   recommend_doses (patients/{ID}.png, .md beside)
    dosing/trial_summary.csv, ...              dosing_trial (simulated data only)

Every file has a name in :data:`FILES`, which is also an attribute of :class:`Results`:
``res.effects`` is the effects table, ``res.pk["pk_2cmt_metab"]`` a PK posterior
(``arviz.InferenceData`` with its named dims and coords), ``res.vpc_summary["pk_1cmt_metab"]``
a VPC summary. Files with a ``{key}`` in their path (one per model or outcome) come as a
read-only mapping from key to content, holding the keys whose files exist; single files come
as their content. Nothing is read until asked for, and each file is read once.

A file that the run has not written raises :class:`ResultsError` naming it, except for
optional files (a stage that not every run has), which give ``None``. Adding a file a new
stage writes is one entry in :data:`FILES`, which names the rule's output in the layout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketamine_pmx import layout

#: Environment variable that notebooks read for the results directory.
RESULTS_ENV = "KETAMINE_PMX_RESULTS"
#: The workflow's stage folders; a results directory holds at least one of them.
STAGE_DIRS = layout.STAGE_DIRS


class ResultsError(FileNotFoundError):
    """A directory is not a results directory, or a result the run has not written."""


def _read_table(path: Path) -> Any:
    from ketamine_pmx.io import read_csv

    return read_csv(path)


def _read_clean(path: Path) -> Any:
    from ketamine_pmx.data.validation import read_clean

    return read_clean(path)


def _read_dosing_table(path: Path) -> Any:
    from ketamine_pmx.dosing.report import read_table

    return read_table(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_pk_posterior(path: Path) -> Any:
    from ketamine_pmx.inference.posterior_files import load_idata

    return load_idata(path)


def _read_response_posterior(path: Path) -> Any:
    from ketamine_pmx.inference.response_fit import load_response_idata

    return load_response_idata(path)


def _read_exposures(path: Path) -> Any:
    from ketamine_pmx.exposure.draws import load_exposures

    return load_exposures(path)


def _output_path(rule: str, output: str) -> str:
    """The path of a rule's output in :mod:`ketamine_pmx.layout`, with its placeholder (the
    model or the outcome: one file each) as ``{key}``."""
    template = layout.path(rule, output)
    names = layout.placeholders(template)
    if len(names) > 1:
        raise ValueError(f"{rule}.{output} ({template}): one placeholder at most")
    return template.replace(f"{{{names[0]}}}", "{key}") if names else template


@dataclass(frozen=True)
class ResultFile:
    """One kind of result file: where it lies, how it is read, what it holds."""

    path: str
    description: str
    reader: Callable[[Path], Any] = _read_table
    optional: bool = False

    @property
    def keyed(self) -> bool:
        return "{key}" in self.path


#: Every result file, by the name it has as an attribute of :class:`Results`.
FILES: dict[str, ResultFile] = {
    # posteriors and draws
    "pk": ResultFile(
        _output_path("fit_pk", "posterior"),
        "PK posterior per PK model (InferenceData)",
        _read_pk_posterior,
    ),
    "response": ResultFile(
        _output_path("fit_response", "posterior"),
        "response posterior per response model (InferenceData)",
        _read_response_posterior,
    ),
    "exposures": ResultFile(
        _output_path("exposures", "draws"),
        "exposure draws (chain, draw, subject, metric) of the reference PK model (xarray)",
        _read_exposures,
    ),
    # the data
    "data": ResultFile(
        _output_path("validate_data", "clean"), "the validated dataset", _read_clean
    ),
    "data_summary": ResultFile(
        _output_path("validate_data", "summary_json"), "the data summary (dict)", _read_json
    ),
    # the simulator's truth (simulated data only)
    "truth_subjects": ResultFile(
        _output_path("simulate_trial", "subjects"),
        "each simulated patient's true parameters, exposures and P(response)",
        optional=True,
    ),
    "truth_population": ResultFile(
        _output_path("simulate_trial", "population"),
        "the simulator's population values, seed and parameter file hash (dict)",
        _read_json,
        optional=True,
    ),
    # PK
    "pk_diagnostics": ResultFile(
        _output_path("diagnose_pk", "table"), "R-hat, ESS, mean, SD, quantiles and eta shrinkage"
    ),
    "pk_gate": ResultFile(
        _output_path("diagnose_pk", "gate"), "diagnostic gate of each PK model", _read_json
    ),
    "pk_gate_check": ResultFile(
        _output_path("gate_pk", "check"),
        "the gate as enforced: passed, or allowed past a failure by which setting (dict)",
        _read_json,
    ),
    "vpc": ResultFile(
        _output_path("ppc_pk", "vpc_table"), "VPC and pcVPC percentiles per time bin"
    ),
    "vpc_summary": ResultFile(
        _output_path("ppc_pk", "vpc_summary"),
        "share of observed percentiles inside their intervals",
    ),
    "gof": ResultFile(
        _output_path("ppc_pk", "gof_table"), "DV, PRED, IPRED and NPD per observation"
    ),
    "gof_summary": ResultFile(_output_path("ppc_pk", "gof_summary"), "NPD and DV/PRED per analyte"),
    "eta_covariates": ResultFile(
        _output_path("ppc_pk", "eta_summary"), "eta shrinkage, weight slope and CYP2B6 means"
    ),
    # exposure and response
    "exposure_summary": ResultFile(
        _output_path("exposures", "summary"), "per-patient exposure medians, intervals, log mean/SD"
    ),
    "response_diagnostics": ResultFile(
        _output_path("fit_response", "diagnostics"), "R-hat, ESS, mean, SD, quantiles per parameter"
    ),
    "response_gate": ResultFile(
        _output_path("fit_response", "gate"), "diagnostic gate of each response model", _read_json
    ),
    "response_gate_check": ResultFile(
        _output_path("gate_response", "check"),
        "the gate as enforced: passed, or allowed past a failure by which setting (dict)",
        _read_json,
    ),
    "comparison": ResultFile(
        _output_path("compare_models", "response"),
        "PSIS-LOO comparison of the response models per outcome",
    ),
    "comparison_pk": ResultFile(
        _output_path("compare_models", "pk"), "PSIS-LOO comparison of the PK models"
    ),
    "pareto_k": ResultFile(
        _output_path("compare_models", "pareto_k"), "Pareto k per model, outcome and point"
    ),
    "effects": ResultFile(
        _output_path("biomarker_effects", "table"),
        "odds ratios and shifts per predictor and indication",
    ),
    "recovery": ResultFile(
        _output_path("biomarker_effects", "recovery"),
        "estimated against true effects (simulated data; else empty)",
    ),
    "response_groups": ResultFile(
        _output_path("ppc_response", "groups_table"), "observed vs predicted response by group"
    ),
    "calibration": ResultFile(
        _output_path("ppc_response", "calibration_table"),
        "observed rate per bin of predicted P(response)",
    ),
    "loo_pit": ResultFile(
        _output_path("ppc_response", "loo_pit_table"), "LOO-PIT summary of % change"
    ),
    # dosing (absent from runs without response models)
    "recommendations": ResultFile(
        _output_path("recommend_doses", "recommendations"),
        "individual dose recommendations, one row per patient",
        _read_dosing_table,
        optional=True,
    ),
    "regimens": ResultFile(
        _output_path("recommend_doses", "regimens"),
        "every candidate regimen of every patient: P(response), exposures, P(limits)",
        _read_dosing_table,
        optional=True,
    ),
    "dosing_trial": ResultFile(
        _output_path("dosing_trial", "summary"),
        "virtual trial: true response and exceedance, guided vs standard (simulated data)",
        optional=True,
    ),
    "dosing_trial_patients": ResultFile(
        _output_path("dosing_trial", "patients"),
        "virtual trial: each new patient's regimens and true outcomes (simulated data)",
        _read_dosing_table,
        optional=True,
    ),
}


class LazyFiles(Mapping[str, Any]):
    """Read-only mapping key -> content of the files matching a ``{key}`` pattern, read on
    first access and kept."""

    def __init__(self, paths: Mapping[str, Path], reader: Callable[[Path], Any]) -> None:
        self._paths = dict(sorted(paths.items()))
        self._reader = reader
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._paths:
            raise KeyError(f"{key!r}: not in this run (present: {', '.join(self._paths) or '-'})")
        if key not in self._loaded:
            self._loaded[key] = self._reader(self._paths[key])
        return self._loaded[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, key: str) -> Path:
        """The file behind ``key``."""
        return self._paths[key]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._paths)})"


@dataclass(frozen=True)
class Results:
    """The results of one run (see the module docstring); build it with :func:`load`."""

    root: Path
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def path(self, name: str, key: str | None = None) -> Path:
        """Where the file ``name`` (of :data:`FILES`) lies, for a key if it has one."""
        entry = _entry(name)
        if entry.keyed != (key is not None):
            raise ValueError(f"{name}: {'a key is' if entry.keyed else 'no key is'} needed")
        return self.root / entry.path.format(key=key)

    def get(self, name: str) -> Any:
        """The content of result ``name``: see :data:`FILES` (also ``res.<name>``)."""
        if name not in self._cache:
            self._cache[name] = self._read(name)
        return self._cache[name]

    def _read(self, name: str) -> Any:
        entry = _entry(name)
        if entry.keyed:
            return LazyFiles(self._keys(entry.path), entry.reader)
        target = self.root / entry.path
        if target.is_file():
            return entry.reader(target)
        if entry.optional:
            return None
        raise ResultsError(
            f"{self.root}: no {entry.path} ({entry.description}); the stage that writes it has "
            "not run for these results"
        )

    def _keys(self, pattern: str) -> dict[str, Path]:
        head, tail = pattern.split("{key}")
        match = re.compile(re.escape(head) + r"([^/.][^/]*)" + re.escape(tail) + "$")
        found = {}
        for p in self.root.glob(pattern.replace("{key}", "*")):
            m = match.match(p.relative_to(self.root).as_posix())
            if m and p.is_file():
                found[m.group(1)] = p
        return found

    def available(self) -> list[str]:
        """Names of the results this run has (single files present, keyed ones non-empty)."""
        out = []
        for name, entry in FILES.items():
            if entry.keyed:
                if self._keys(entry.path):
                    out.append(name)
            elif (self.root / entry.path).is_file():
                out.append(name)
        return out

    @property
    def pk_models(self) -> list[str]:
        """PK models with a posterior in this run, by name."""
        return list(self.get("pk"))

    @property
    def response_models(self) -> list[str]:
        """Response models with a posterior in this run, by name."""
        return list(self.get("response"))

    @property
    def reference_pk_model(self) -> str | None:
        """The PK model the exposures (and so the response models) come from, if computed."""
        if not (self.root / FILES["exposures"].path).is_file():
            return None
        model = self.get("exposures").attrs.get("pk_model")
        return str(model) if model else None

    def __repr__(self) -> str:
        return (
            f"Results({str(self.root)!r}: PK models {self.pk_models}, response models "
            f"{self.response_models}, files {self.available()})"
        )

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(FILES))


def _entry(name: str) -> ResultFile:
    try:
        return FILES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a result name; known: {', '.join(FILES)}") from None


def _add_properties() -> None:
    """``res.<name>`` for every entry of FILES (so a new entry is all a new file needs)."""
    for name, entry in FILES.items():
        kind = "mapping key -> " if entry.keyed else ""
        doc = f"{kind}{entry.description} ({entry.path})" + (
            "; None when absent" if entry.optional else ""
        )
        setattr(Results, name, property(lambda self, n=name: self.get(n), doc=doc))


_add_properties()


def is_results_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a run's results directory (holds a stage folder)."""
    p = Path(path)
    return p.is_dir() and any((p / d).is_dir() for d in STAGE_DIRS)


def load(run_dir: str | os.PathLike[str] | None = None) -> Results:
    """The results in ``run_dir`` (default: ``$KETAMINE_PMX_RESULTS``, else ``results``).

    Raises :class:`ResultsError` naming the directory when it is not a results directory,
    and listing results directories below it (``results/smoke``, ...) if there are any.
    """
    if run_dir is None:
        run_dir = os.environ.get(RESULTS_ENV, "results")
    root = Path(run_dir)
    if not is_results_dir(root):
        what = "does not exist" if not root.exists() else "is not a results directory"
        below = (
            sorted(p for p in root.iterdir() if is_results_dir(p) and not p.name.startswith("."))
            if root.is_dir()
            else []
        )
        hint = (
            f"; results directories in it: {', '.join(str(p) for p in below)}"
            if below
            else "; pass the config's results_dir (results, results/smoke, ...)"
        )
        raise ResultsError(
            f"{root} ({root.resolve()}) {what}: a run's results directory holds at least one "
            f"of {', '.join(d + '/' for d in STAGE_DIRS)}{hint}"
        )
    return Results(root)


__all__ = [
    "FILES",
    "RESULTS_ENV",
    "STAGE_DIRS",
    "LazyFiles",
    "ResultFile",
    "Results",
    "ResultsError",
    "is_results_dir",
    "load",
]
