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


# --------------------------------------------------------------------------------------
# Results in the user's units
# --------------------------------------------------------------------------------------

#: The quantities of a result with a unit, and their unit inside the library: time in h,
#: concentrations in ng/mL, clearances in L/h, volumes in L, rate constants in 1/h. Doses
#: (mg) are not converted back.
INTERNAL_UNITS = {
    "time": "h",
    "conc": "ng/mL",
    "clearance": "L/h",
    "volume": "L",
    "rate": "1/h",
}
#: Quantities without a unit (fractions, log-scale SDs, proportional error SDs).
UNITLESS = "-"


def to_user_units(
    values: Any, quantity: str, units: Mapping[str, str], analyte: str | None = None
) -> tuple[Any, str]:
    """``values`` of ``quantity`` from the library's unit (:data:`INTERNAL_UNITS`) into the
    unit ``units`` (the config's ``data.units``) declares, and the unit's label.

    Time and concentration take ``units["time"]`` and ``units["conc"]``; a clearance is a
    volume per time unit (L/h, L/min, L/d), a rate constant per time unit (1/h, 1/min, 1/d),
    a volume stays in L. A concentration in nM needs the molar mass of ``analyte``'s
    species; without one (no analyte, or a generic drug) it stays in ng/mL, so the label says
    what the numbers are. A quantity without a unit (``fraction``, anything not in
    :data:`INTERNAL_UNITS`) is returned as given with the label :data:`UNITLESS`.

    >>> to_user_units(2.0, "clearance", {"time": "min"})
    (0.03333333333333333, 'L/min')
    >>> to_user_units(2840.0, "conc", {"conc": "mg/L"})
    (2.84, 'mg/L')
    """
    from ketamine_pmx.contract import ANALYTES, MOLAR_MASS_G_MOL, unit_factor

    if quantity not in INTERNAL_UNITS:
        return values, UNITLESS
    time_unit = units.get("time", "h")
    per_time = unit_factor("time", time_unit)  # user time unit in h
    if quantity == "time":
        return values / per_time, time_unit
    if quantity in ("clearance", "rate"):
        head = "L" if quantity == "clearance" else "1"
        return values * per_time, f"{head}/{time_unit}"
    if quantity == "volume":
        return values, "L"
    conc = units.get("conc", "ng/mL")
    if conc == "nM":
        species = ANALYTES[analyte].species if analyte in ANALYTES else None
        if not species:
            return values, "ng/mL"
        return values * 1000.0 / MOLAR_MASS_G_MOL[species], "nM"
    return values / unit_factor("conc", conc), conc


def _elements_of(x: Any) -> list[tuple[str | None, Any]]:
    """(label of the element's non-sample coordinates or None, draws) of a posterior variable."""
    dims = [d for d in x.dims if d not in ("chain", "draw")]
    if not dims:
        return [(None, x.values.ravel())]
    flat = x.stack(_element=dims).transpose("_element", ...)
    labels = [v if isinstance(v, tuple) else (v,) for v in flat["_element"].values]
    return [(", ".join(map(str, n)), flat.values[k]) for k, n in enumerate(labels)]


def parameter_summary(idata: Any, kinds: Mapping[str, str], units: Mapping[str, str]) -> Any:
    """The population parameters of a PK fit on their natural scale, in the user's units.

    One row per parameter element: the typical values (``log_<name>_pop`` as exp,
    ``logit_<name>_pop`` as a fraction; ``kinds`` maps ``<name>`` to its kind: clearance,
    volume, rate or fraction, as :meth:`PKSpec.kind` says), the between-subject SDs
    ``omega_*`` (log scale, no unit) and the residual SDs (``sigma_add`` a concentration,
    ``sigma_prop`` a fraction). Columns: ``parameter``, ``group`` (the element, e.g. the
    enantiomer or analyte; empty for a scalar), ``unit``, ``mean``, ``sd``, ``q5``,
    ``median``, ``q95``, ``r_hat``, ``ess_bulk``, ``ess_tail``.
    """
    import arviz as az
    import numpy as np
    import pandas as pd

    post = idata.posterior
    rows = []
    for var in post.data_vars:
        name = str(var)
        if name.startswith("log_") and name.endswith("_pop"):
            par, transform = name[len("log_") : -len("_pop")], np.exp
            quantity = kinds.get(par, "rate")
        elif name.startswith("logit_") and name.endswith("_pop"):
            par, quantity = name[len("logit_") : -len("_pop")], "fraction"

            def transform(v):
                return 1.0 / (1.0 + np.exp(-v))
        elif name.startswith("omega_"):
            par, transform, quantity = name, None, "fraction"
        elif name in ("sigma_add", "sigma_prop"):
            par, transform = name, None
            quantity = "conc" if name == "sigma_add" else "fraction"
        else:
            continue
        x = post[var] if transform is None else transform(post[var])
        for group, draws in _elements_of(x.rename(name)):
            draws = np.asarray(draws, float).reshape(post.sizes["chain"], post.sizes["draw"])
            analyte = group if quantity == "conc" else None
            draws, unit = to_user_units(draws, quantity, units, analyte)
            flat = draws.ravel()
            rows.append(
                {
                    "parameter": par,
                    "group": group or "",
                    "unit": unit,
                    "mean": float(flat.mean()),
                    "sd": float(flat.std(ddof=1)) if flat.size > 1 else float("nan"),
                    "q5": float(np.quantile(flat, 0.05)),
                    "median": float(np.median(flat)),
                    "q95": float(np.quantile(flat, 0.95)),
                    "r_hat": float(az.rhat(draws)),
                    "ess_bulk": float(az.ess(draws, method="bulk")),
                    "ess_tail": float(az.ess(draws, method="tail")),
                }
            )
    columns = ["parameter", "group", "unit", "mean", "sd", "q5", "median", "q95"]
    return pd.DataFrame(rows, columns=[*columns, "r_hat", "ess_bulk", "ess_tail"])


#: Columns of the predictive-check tables holding times and concentrations.
VPC_TIME_COLUMNS = ("time_h", "time_lo", "time_hi")
VPC_CONC_COLUMNS = ("observed", "sim_lo", "sim_median", "sim_hi", "lloq")
GOF_CONC_COLUMNS = ("DV", "PRED", "IPRED")


def _convert_rows(frame: Any, columns: tuple[str, ...], analytes: Any, units: Any) -> list[str]:
    """Concentration ``columns`` of ``frame`` into the user's unit in place, per analyte; the
    unit label of each row."""
    labels = ["ng/mL"] * len(frame)
    for analyte in dict.fromkeys(analytes):
        rows = (analytes == analyte).to_numpy()
        for col in columns:
            values, unit = to_user_units(
                frame.loc[rows, col].to_numpy(float), "conc", units, analyte
            )
            frame.loc[rows, col] = values
        for k in rows.nonzero()[0]:
            labels[k] = unit
    return labels


def vpc_in_user_units(table: Any, units: Mapping[str, str]) -> Any:
    """A VPC table (:func:`ketamine_pmx.checks.vpc_table`) with times (``time``, ``time_lo``,
    ``time_hi``) and concentrations in the user's units, named in ``time_unit`` and
    ``conc_unit`` columns."""
    out = table.copy()
    for col in VPC_TIME_COLUMNS:
        out[col], time_unit = to_user_units(out[col].to_numpy(float), "time", units)
    out = out.rename(columns={"time_h": "time"})
    out.insert(out.columns.get_loc("time_hi") + 1, "time_unit", time_unit)
    out["conc_unit"] = _convert_rows(out, VPC_CONC_COLUMNS, out["analyte"], units)
    return out


def observations_in_user_units(obs: Any, units: Mapping[str, str]) -> Any:
    """Observation rows (``TIME``, ``DV``, ``LLOQ``, ``ANALYTE``: a PK dataset's ``obs``) with
    times and concentrations in the user's units (the observation dots of a VPC)."""
    out = obs.copy()
    out["TIME"], _ = to_user_units(out["TIME"].to_numpy(float), "time", units)
    columns = tuple(c for c in ("DV", "LLOQ") if c in out)
    _convert_rows(out, columns, out["ANALYTE"], units)
    return out


def gof_in_user_units(table: Any, units: Mapping[str, str]) -> Any:
    """A goodness-of-fit table (:func:`ketamine_pmx.checks.gof_table`) with ``TIME``, ``DV``,
    ``PRED`` and ``IPRED`` in the user's units, named in ``TIME_UNIT`` and ``CONC_UNIT``."""
    out = table.copy()
    out["TIME"], time_unit = to_user_units(out["TIME"].to_numpy(float), "time", units)
    out.insert(out.columns.get_loc("TIME") + 1, "TIME_UNIT", time_unit)
    out["CONC_UNIT"] = _convert_rows(out, GOF_CONC_COLUMNS, out["ANALYTE"], units)
    return out


__all__ = [
    "FILES",
    "INTERNAL_UNITS",
    "RESULTS_ENV",
    "STAGE_DIRS",
    "UNITLESS",
    "LazyFiles",
    "ResultFile",
    "Results",
    "ResultsError",
    "gof_in_user_units",
    "is_results_dir",
    "load",
    "observations_in_user_units",
    "parameter_summary",
    "to_user_units",
    "vpc_in_user_units",
]
