r"""Individualised dose recommendations (DESIGN.md section 7).

For a new patient (covariates, baseline biomarkers, optionally concentrations measured after a
test dose) and every candidate regimen of the configured grid this module gives P(response)
with its interval, the predicted exposures, and the probability of exceeding each safety
limit; it then recommends a regimen and says why.

**The patient's PK posterior** combines the population posterior (the reference PK model's
draws) with the patient's own data:

- without measured concentrations it is the population-predictive distribution: each retained
  population draw with a new subject effect drawn from that draw's between-subject
  distribution, for the patient's covariates (``method = population``);
- with concentrations, the patient's posterior has as prior the population-predictive draws
  moment-matched as a multivariate normal on the transformed scale (log; logit for fractions:
  population uncertainty and between-subject variability together) and as likelihood the
  patient's measurements under the model's residual error with its SDs at their posterior
  medians (BLQ rows by Beal's M3). The fast method is importance sampling at its Laplace
  approximation, as MAP-Bayesian forecasting tools start from the mode but keeping the whole
  posterior: the mode and Hessian (finite differences, vectorised over the points), a
  Student-t proposal (5 df, covariance inflated 1.5x), ``dosing.proposals`` weighted draws and
  ``dosing.pk_draws`` of them resampled (``method = importance``); its effective sample size
  ``(sum w)^2 / sum w^2`` is reported;
- when that ESS is below ``dosing.min_ess`` (a posterior far from normal), the patient is
  refitted with NUTS (PyMC) on the same posterior (``method = nuts``).

**Exposures under a candidate regimen** use the exact linear solution and superposition. A
regimen is ``n`` identical zero-order infusions of duration ``d`` every ``I`` hours with a
formulation (racemate, esketamine, arketamine) that splits each dose over the enantiomer
chains. Concentrations are linear in the dose, so one unit infusion per chain and patient draw
gives every regimen of the grid: with ``c1`` the parent concentration of a unit infusion and
``A1`` the AUC of an analyte from its start,

- peak total ketamine = ``amount * sum_chains w_c sum_{m<n} c1_c(d + I m)``, the concentration at
  the end of the last infusion (the parent rises throughout each infusion, so its peaks are
  infusion ends, and the last is the highest because every earlier infusion still adds to it);
- AUC to the primary endpoint T (``response.endpoints``: 24 h after the first dose for MDD,
  168 h after the end of the course for CRPS) = ``amount * sum_chains w_c sum_{k<n} A1_c(T - I k)``;
  the same for total ketamine is the cumulative exposure of the course.

The response model's exposure metric (e.g. ``AUC_HNK``) enters its linear predictor exactly as
in the fit (centred within indication, scaled by the fit's scale) with each PK draw paired with
a response-posterior draw (the two posteriors are independent; PK-PD is sequential), so
P(response) averages over PK uncertainty, between-subject variability and the uncertainty of
the response effects. Its interval is over the draws of the patient's response probability.

Every reported exposure (peak, course AUC, the response model's AUC) comes with its median and
``decision.prob`` interval over the patient's draws. Each probability is a Monte Carlo
estimate over ``S`` draws and carries its standard error (``*_MCSE``) over ``min(S, ESS)``
effective draws: ``sd(p_s) / sqrt(n)`` for P(response), and for a limit's exceedance share
``sqrt(j (1 - j) / n)`` at the Jeffreys estimate ``j = (k + 1/2) / (S + 1)`` of ``k`` draws
above the limit, so that none of ``S`` reads as the draws' resolution, not as certainty.

**Common random numbers**: every patient is computed from the same population draws (evenly
spaced posterior draws, or resampled by the seed when fewer) and the same standard-normal
new-subject effects (scaled by each draw's between-subject distribution), the same
response-posterior draws, and importance-sampling and NUTS streams that restart from the seed
for each patient. A patient's plan therefore depends on their own inputs and the seed only:
not on their row, on the other patients, or on how the file is split into batches; two
patients with the same inputs get the same plan.

**Decision**: a regimen is acceptable when each limit's exceedance probability is at most its
tolerated probability and it respects the patient's setting and caps. Among acceptable regimens
the one with the highest P(response) is best (the first in the grid's order if several are).
Another counts as equally good when its P(response) lies below the best's by at most
``decision.margin`` or by at most ``decision.tie_mcse`` Monte Carlo standard errors of the
difference, computed over the draws the two share (``sd(p_best,s - p_s) / sqrt(n)``:
``P_RESPONSE_GAP_SE``), so that simulation noise never decides between near-equal regimens.
Of the equally good ones the lowest median cumulative ketamine exposure is recommended, then
the smaller amount, then the first in the grid's order. A patient no regimen is open to (the
patient's dose or rate cap below every candidate, or no family for the indication and setting)
or none of whose open regimens is acceptable gets a row saying so (``STATUS``, ``REASON``)
with no regimen, and the other patients are recommended as usual.

A patient whose best acceptable regimen stays below ``decision.min_p_response`` is flagged as a
likely non-responder. ``DRIVER`` names the factor that lowers the response logit most against
a typical patient of the indication (biomarkers at the fitted trial's means, CYP2B6 NM, the
trial's mean exposure of the indication), read at the best acceptable regimen for a flagged
patient and at the recommended one otherwise: a factor's contribution is its fitted coefficient
times the patient's standardised value (mean over draws), it is named only when that lowers
the logit by at least 0.1, and the patient's value is called high or low from its side of the
trial's mean, whatever the coefficient's sign. A flagged patient none of whose factors lowers
it that much is told so, with the best acceptable P(response) and a typical patient's at the
trial's mean exposure (a low response across the indication).

This is a research tool: its recommendations are model outputs, not medical advice, and the
safety limits are assumptions for the user to set (``dosing.safety``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit, logit
from scipy.stats import norm

from .config import ConfigError
from .contract import (
    CYP2B6_CLASSES,
    DEFAULT_CYP2B6_MAP,
    DOSE_TARGETS,
    EVID_DOSE,
    EVID_OBSERVATION,
)
from .data import DataValidationError, Problem, read_raw, validate_frame
from .exposure import SUM_ANALYTES, _auc_conc, _etas, individual_parameters
from .inference import (
    CONC_FLOOR_NG_ML,
    PKData,
    _chain_conc,
    censored_observations,
    chain_doses,
    load_idata,
    prepare_pk_data,
    tile_doses,
    tile_subjects,
)
from .pk import build_layout, np_conc_ng_ml, np_disposition, pt_conc_ng_ml
from .response import PREFIX, ResponseSpec, load_response_spec
from .specs import CHAIN_ANALYTES, PKSpec, load_pk_spec

DISCLAIMER = (
    "Research output of a statistical model, not medical advice: the recommendation depends "
    "on the model's assumptions and on safety limits set by the user, and must not guide the "
    "treatment of a patient without clinical judgement."
)
SETTINGS = ("outpatient", "inpatient")
#: Patients-file columns: always required, and optional.
PATIENT_REQUIRED = ("ID", "INDICATION", "WT")
PATIENT_OPTIONAL = (
    "AGE",
    "SEX",
    "CYP2B6",
    "DSER",
    "MG",
    "SETTING",
    "MAX_DOSE_MG_KG",
    "MAX_RATE_MG_H",
)
_NUMERIC = ("WT", "AGE", "DSER", "MG", "MAX_DOSE_MG_KG", "MAX_RATE_MG_H")
#: Pseudo-subject x observation terms evaluated at once (memory bound).
_TERMS_PER_BATCH = 2_000_000


class DosingError(ValueError):
    """The recommendation cannot be computed (models, grid or a patient); the message says why."""


# --------------------------------------------------------------------------------------
# Models of a run
# --------------------------------------------------------------------------------------


@dataclass
class Models:
    """What a recommendation needs from a finished run: the reference PK and response fits."""

    pk_spec: PKSpec
    pk_posterior: xr.Dataset  # stacked: dims (sample, ...)
    resp_spec: ResponseSpec
    resp_posterior: xr.Dataset  # stacked
    resp_const: xr.Dataset
    endpoints: dict[str, dict[str, Any]]

    @property
    def indications(self) -> list[str]:
        return [str(g) for g in self.resp_posterior["indication"].to_numpy()]

    def needed_covariates(self) -> list[str]:
        """Patient columns the two models use (besides ID and INDICATION)."""
        cols = ["WT"]
        uses_cyp = bool(self.pk_spec.spec["covariates"].get("cyp2b6")) or bool(
            self.resp_spec.spec["cyp2b6"]
        )
        if uses_cyp:
            cols.append("CYP2B6")
        cols += [p["column"] for p in self.resp_spec.predictors]
        return cols


def load_models(
    pk_spec: str | Path,
    pk_posterior: str | Path,
    resp_spec: str | Path,
    resp_posterior: str | Path,
    endpoints: dict[str, dict[str, Any]],
) -> Models:
    """Read the reference PK and response posteriors (each checked against its spec)."""
    pspec = load_pk_spec(pk_spec)
    rspec = load_response_spec(resp_spec)
    pk = load_idata(pk_posterior, pspec)
    resp = load_idata(resp_posterior, rspec)
    return make_models(pspec, pk.posterior, rspec, resp.posterior, resp.constant_data, endpoints)


def make_models(
    pk_spec: PKSpec,
    pk_posterior: xr.Dataset,
    resp_spec: ResponseSpec,
    resp_posterior: xr.Dataset,
    resp_const: xr.Dataset,
    endpoints: dict[str, dict[str, Any]],
) -> Models:
    """:class:`Models` from posterior datasets (chain, draw, ...), e.g. ``oracle`` ones."""
    if resp_spec.exposure and not resp_spec.exposure["metric"].startswith("AUC_"):
        raise DosingError(
            f"{resp_spec.path}: dose recommendations need an AUC exposure metric, the model "
            f"uses {resp_spec.exposure['metric']}"
        )
    missing = sorted(set(map(str, resp_posterior["indication"].to_numpy())) - set(endpoints))
    if missing:
        raise DosingError(f"response.endpoints has no endpoint for indication(s) {missing}")
    return Models(
        pk_spec=pk_spec,
        pk_posterior=pk_posterior.stack(sample=("chain", "draw")).transpose("sample", ...),
        resp_spec=resp_spec,
        resp_posterior=resp_posterior.stack(sample=("chain", "draw")).transpose("sample", ...),
        resp_const=resp_const,
        endpoints=endpoints,
    )


def _take(post: xr.Dataset, n: int, rng: np.random.Generator) -> xr.Dataset:
    """``n`` draws: evenly spaced when the posterior has at least ``n``, else resampled."""
    total = post.sizes["sample"]
    if total >= n:
        idx = np.linspace(0, total - 1, n).round().astype(int)  # distinct: total >= n
    else:
        idx = rng.integers(0, total, n)
    return post.isel(sample=idx)


# --------------------------------------------------------------------------------------
# Patients and their measured concentrations
# --------------------------------------------------------------------------------------


def load_patients(
    path: str | Path,
    models: Models,
    cfg: dict[str, Any],
    data_cfg: dict[str, Any],
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The checked patients of a file (:func:`read_patients` without its warnings)."""
    return read_patients(path, models, cfg, data_cfg, frame)[0]


def read_patients(
    path: str | Path,
    models: Models,
    cfg: dict[str, Any],
    data_cfg: dict[str, Any],
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read and check a patients file; every problem is listed with its file line.

    Refused: a missing column or value the models need, a number that does not parse or lies
    outside ``data.plausibility``, an unknown indication (not fitted, or without a regimen
    family), an unknown CYP2B6 genotype/class, SETTING other than outpatient/inpatient, a
    duplicated ID, and a cap (MAX_DOSE_MG_KG, MAX_RATE_MG_H) that is not positive or exceeds
    the configured hard maximum. Nothing is computed for a file with any problem.

    Returns the patients (row ``i`` on file line ``i + 2``) and the file's warnings (a value
    outside a plausible range whose ``action`` is ``warn``, unknown columns), for
    :meth:`Caveats.from_warnings` to pass on to the user.
    """
    source = str(path)
    raw = read_raw(path) if frame is None else frame.astype(str)
    problems: list[Problem] = []
    needed = models.needed_covariates()
    for col in dict.fromkeys([*PATIENT_REQUIRED, *needed]):
        if col not in raw.columns:
            problems.append(
                Problem("column-missing", f"column {col} is required by the models", column=col)
            )
    unknown = [c for c in raw.columns if c not in (*PATIENT_REQUIRED, *PATIENT_OPTIONAL)]
    if unknown:
        problems.append(
            Problem(
                "column-unknown",
                f"column(s) {unknown} are not patient columns "
                f"(known: {list(PATIENT_REQUIRED + PATIENT_OPTIONAL)})",
                severity="warning",
            )
        )
    if any(p.severity == "error" for p in problems):
        raise DataValidationError(source, problems)
    out = raw[[c for c in raw.columns if c in (*PATIENT_REQUIRED, *PATIENT_OPTIONAL)]].copy()

    def lines(mask: pd.Series) -> tuple[int, ...]:
        return tuple(int(i) + 2 for i in np.flatnonzero(mask.to_numpy()))

    missing_text = ("", ".", "NA", "NaN", "nan")
    ids = out["ID"].astype(str)
    blank = ids.isin(missing_text)
    if blank.any():
        problems.append(Problem("id-missing", "ID is empty", column="ID", lines=lines(blank)))
    dup = ids.duplicated(keep=False) & ~blank
    if dup.any():
        problems.append(
            Problem("id-duplicate", "ID appears on more than one row", "ID", lines(dup))
        )
    for col in [c for c in _NUMERIC if c in out.columns]:
        text = out[col].astype(str)
        absent = text.isin(missing_text)
        values = pd.to_numeric(text.where(~absent), errors="coerce")
        bad = ~absent & values.isna()
        if bad.any():
            problems.append(Problem("not-a-number", f"{col} is not a number", col, lines(bad)))
        if col in needed and absent.any():
            problems.append(
                Problem(
                    "covariate-missing",
                    f"{col} is missing; the models need it",
                    col,
                    lines(absent),
                )
            )
        out[col] = values
        rng = data_cfg["plausibility"].get(col)
        if rng is not None:
            outside = values.notna() & ((values < rng["min"]) | (values > rng["max"]))
            if outside.any():
                problems.append(
                    Problem(
                        "covariate-range",
                        f"{col} outside its plausible range [{rng['min']}, {rng['max']}]",
                        col,
                        lines(outside),
                        severity="error" if rng["action"] == "error" else "warning",
                    )
                )
    families = {f["indication"] for f in cfg["regimens"]}
    known = sorted(set(models.indications) & families)
    bad_ind = ~out["INDICATION"].astype(str).isin(known)
    if bad_ind.any():
        problems.append(
            Problem(
                "indication-unknown",
                f"INDICATION must be one the models were fitted to and the regimen grid covers: "
                f"{known}",
                "INDICATION",
                lines(bad_ind),
            )
        )
    if "CYP2B6" in out.columns:
        cmap = {**DEFAULT_CYP2B6_MAP, **data_cfg["codes"]["cyp2b6"]}
        text = out["CYP2B6"].astype(str)
        cls = text.map(lambda v: cmap.get(v))
        absent = text.isin(missing_text)
        if "CYP2B6" in needed and absent.any():
            problems.append(
                Problem(
                    "covariate-missing",
                    "CYP2B6 is missing; the models need it",
                    "CYP2B6",
                    lines(absent),
                )
            )
        bad = ~absent & cls.isna()
        if bad.any():
            problems.append(
                Problem(
                    "cyp2b6-unknown",
                    f"CYP2B6 must be a genotype or class of {sorted(cmap)}",
                    "CYP2B6",
                    lines(bad),
                )
            )
        out["CYP2B6_CLASS"] = cls
    else:
        out["CYP2B6_CLASS"] = "NM"
    setting = out["SETTING"].astype(str).str.lower() if "SETTING" in out else None
    if setting is not None:
        bad = ~setting.isin((*SETTINGS, *missing_text))
        if bad.any():
            problems.append(
                Problem(
                    "setting-unknown", f"SETTING must be one of {SETTINGS}", "SETTING", lines(bad)
                )
            )
        out["SETTING"] = setting.where(~setting.isin(missing_text), "outpatient")
    else:
        out["SETTING"] = "outpatient"
    hard = cfg["hard_limits"]
    if "MAX_DOSE_MG_KG" in out:
        v = out["MAX_DOSE_MG_KG"]
        bad = v.notna() & ((v <= 0) | (v > hard["max_dose_mg_kg"]))
        if bad.any():
            problems.append(
                Problem(
                    "dose-cap",
                    f"MAX_DOSE_MG_KG must be > 0 and at most the hard maximum "
                    f"{hard['max_dose_mg_kg']} mg/kg",
                    "MAX_DOSE_MG_KG",
                    lines(bad),
                )
            )
    if "MAX_RATE_MG_H" in out:
        v = out["MAX_RATE_MG_H"]
        cap = out["SETTING"].map(
            lambda s: hard["max_rate_mg_h"].get(s, hard["max_rate_mg_h"]["any"])
        )
        bad = v.notna() & ((v <= 0) | (v > cap))
        if bad.any():
            problems.append(
                Problem(
                    "rate-cap",
                    "MAX_RATE_MG_H must be > 0 and at most the hard maximum of the patient's "
                    f"setting ({hard['max_rate_mg_h']} mg/h)",
                    "MAX_RATE_MG_H",
                    lines(bad),
                )
            )
    if any(p.severity == "error" for p in problems):
        raise DataValidationError(source, problems)
    out["ID"] = ids
    out["INDICATION"] = out["INDICATION"].astype(str)
    return out.reset_index(drop=True), problems


def load_concentrations(
    path: str | Path, patients: pd.DataFrame, data_cfg: dict[str, Any]
) -> pd.DataFrame:
    """Measured concentrations (and the doses before them) of some patients, as a clean table.

    The file is NONMEM-style rows (ID, TIME, EVID, AMT, RATE, CMT or ANALYTE, DV, BLQ, LLOQ;
    BLQ rows allowed) checked by the data contract row by row; the patients' covariates come
    from the patients file. An ID not in the patients file, a patient without a dose record
    before an observation, or without a concentration row is refused.
    """
    source = str(path)
    raw = read_raw(path)
    problems: list[Problem] = []
    if "ID" not in raw.columns:
        raise DataValidationError(source, [Problem("column-missing", "column ID is required")])
    known = set(patients["ID"])
    stranger = ~raw["ID"].isin(known)
    if stranger.any():
        problems.append(
            Problem(
                "id-unknown",
                "ID is not in the patients file",
                "ID",
                tuple(int(i) + 2 for i in np.flatnonzero(stranger.to_numpy())),
            )
        )
        raise DataValidationError(source, problems)
    frame = raw.copy()
    by_id = patients.set_index("ID")
    for col in ("WT", "AGE", "SEX", "CYP2B6", "DSER", "MG", "INDICATION"):
        if col in frame.columns or col not in by_id.columns:
            continue
        frame[col] = frame["ID"].map(by_id[col]).astype(str).replace({"nan": ""})
    dcfg = {**data_cfg, "required_covariates": ["WT"]}
    clean = validate_frame(frame, dcfg, source).table
    for sid, rows in clean.groupby("ID", sort=False):
        obs = rows[(rows["EVID"] == EVID_OBSERVATION) & rows["DV"].notna()]
        doses = rows[rows["EVID"] == EVID_DOSE]
        where = tuple(int(i) + 2 for i in rows.index[:3])
        if obs.empty:
            problems.append(
                Problem("no-concentration", f"patient {sid} has no concentration row", "ID", where)
            )
        elif doses.empty or doses["TIME"].min() >= obs["TIME"].min():
            problems.append(
                Problem(
                    "no-prior-dose",
                    f"patient {sid}: a concentration precedes every dose record",
                    "TIME",
                    where,
                )
            )
    if problems:
        raise DataValidationError(source, problems)
    return clean


# --------------------------------------------------------------------------------------
# Regimens
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regimen:
    """``sessions`` identical zero-order infusions every ``interval_h`` hours."""

    family: str
    indication: str
    setting: str
    formulation: str
    duration_h: float
    sessions: int
    interval_h: float
    dose_mg_kg: float | None = None
    rate_mg_h: float | None = None

    @property
    def kind(self) -> str:
        return "per_kg" if self.dose_mg_kg is not None else "rate"

    def amount_mg(self, wt: np.ndarray | float) -> np.ndarray:
        """Amount of one session (mg) for patients of weight ``wt``."""
        if self.dose_mg_kg is not None:
            return self.dose_mg_kg * np.asarray(wt, float)
        return np.full(np.shape(wt), float(self.rate_mg_h) * self.duration_h)

    @property
    def label(self) -> str:
        size = (
            f"{self.dose_mg_kg:g} mg/kg over {self.duration_h * 60:.0f} min"
            if self.dose_mg_kg is not None
            else f"{self.rate_mg_h:g} mg/h for {self.duration_h:g} h"
        )
        rep = f", {self.sessions} x every {self.interval_h:g} h" if self.sessions > 1 else ""
        return f"{self.formulation} {size}{rep}"

    def doses(self, wt: float) -> list[tuple[float, float, float]]:
        """(start h, amount mg, rate mg/h) of every infusion."""
        amt = float(self.amount_mg(wt))
        return [(k * self.interval_h, amt, amt / self.duration_h) for k in range(self.sessions)]


def regimen_grid(cfg: dict[str, Any]) -> list[Regimen]:
    """Every candidate regimen of ``dosing.regimens``; a family that breaks a rule (a value
    above the hard limits, infusions longer than their interval, an incomplete grid) is a
    :class:`~ketamine_pmx.config.ConfigError` naming it."""
    hard = cfg["hard_limits"]
    out: list[Regimen] = []
    problems: list[str] = []
    for i, fam in enumerate(cfg["regimens"]):
        where = f"dosing.regimens[{i}]"
        name = fam.get("name", f"{fam['indication']} family {i}")
        per_kg = "dose_mg_kg" in fam or "duration_h" in fam
        per_rate = "rate_mg_h" in fam or "hours_per_day" in fam
        if (
            per_kg == per_rate
            or (per_kg and not {"dose_mg_kg", "duration_h"} <= set(fam))
            or (per_rate and not {"rate_mg_h", "hours_per_day"} <= set(fam))
        ):
            problems.append(
                f"{where}: give dose_mg_kg with duration_h, or rate_mg_h with hours_per_day"
            )
            continue
        setting = fam.get("setting", "any")
        interval = float(fam.get("interval_h", 24.0))
        sessions = fam.get("sessions", [1])
        durations = fam["duration_h"] if per_kg else fam["hours_per_day"]
        if max(sessions) > 1 and max(durations) > interval:
            problems.append(
                f"{where}: infusions of {max(durations)} h do not fit an interval of {interval} h"
            )
        if per_kg:
            too_big = [v for v in fam["dose_mg_kg"] if v > hard["max_dose_mg_kg"]]
            if too_big:
                problems.append(
                    f"{where}.dose_mg_kg: {too_big} above the hard maximum "
                    f"{hard['max_dose_mg_kg']} mg/kg (dosing.hard_limits.max_dose_mg_kg)"
                )
            sizes = [("dose_mg_kg", float(v)) for v in fam["dose_mg_kg"]]
        else:
            cap = hard["max_rate_mg_h"][setting]
            too_big = [v for v in fam["rate_mg_h"] if v > cap]
            if too_big:
                problems.append(
                    f"{where}.rate_mg_h: {too_big} above the hard maximum {cap} mg/h of the "
                    f"{setting} setting (dosing.hard_limits.max_rate_mg_h.{setting})"
                )
            sizes = [("rate_mg_h", float(v)) for v in fam["rate_mg_h"]]
        for form, dur, n, (key, size) in itertools.product(
            fam["formulations"], durations, sessions, sizes
        ):
            out.append(
                Regimen(
                    family=name,
                    indication=fam["indication"],
                    setting=setting,
                    formulation=form,
                    duration_h=float(dur),
                    sessions=int(n),
                    interval_h=interval,
                    **{key: size},
                )
            )
    if problems:
        raise ConfigError("invalid dosing.regimens:\n  - " + "\n  - ".join(problems))
    return out


def open_mask(reg: Regimen, patients: pd.DataFrame) -> np.ndarray:
    """Which patients a regimen is open to (indication, setting, the patients' caps)."""
    ok = patients["INDICATION"].to_numpy() == reg.indication
    if reg.setting != "any":
        ok &= patients["SETTING"].to_numpy() == reg.setting
    if reg.dose_mg_kg is not None and "MAX_DOSE_MG_KG" in patients:
        cap = patients["MAX_DOSE_MG_KG"].to_numpy(float)
        ok &= ~(reg.dose_mg_kg > cap + 1e-12)  # NaN (no cap) compares False
    if reg.rate_mg_h is not None and "MAX_RATE_MG_H" in patients:
        cap = patients["MAX_RATE_MG_H"].to_numpy(float)
        ok &= ~(reg.rate_mg_h > cap + 1e-12)
    return ok


# --------------------------------------------------------------------------------------
# The patient's PK posterior
# --------------------------------------------------------------------------------------


@dataclass
class IndividualPosterior:
    """PK parameter draws of each patient (sample, patient, chain) and how they were got."""

    params: dict[str, np.ndarray]
    method: list[str]
    ess: np.ndarray
    notes: list[str] = field(default_factory=list)


def _population_draws(
    models: Models, wt: np.ndarray, cyp: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], xr.Dataset]:
    """Population-predictive PK draws (sample, patient, chain) for covariates ``wt``/``cyp``.

    Common random numbers: every patient shares the same ``n`` population draws and the same
    new-subject effects (one standard-normal draw per sample, scaled by that sample's
    between-subject distribution), so a patient's draws depend on their covariates and the
    generator's seed alone, not on who else is in the call or where."""
    post = _take(models.pk_posterior, n, rng)
    one = _etas(models.pk_spec, post, 1, "new", rng)  # (sample, 1, chain) per group
    eta = {g: np.broadcast_to(v, (v.shape[0], len(wt), v.shape[2])) for g, v in one.items()}
    params = individual_parameters(models.pk_spec, post, wt, cyp, eta=eta)
    return params, post


def _patient_pkdata(models: Models, rows: pd.DataFrame) -> PKData:
    data = prepare_pk_data(rows, models.pk_spec)
    fitted = [str(a) for a in models.pk_posterior["analyte"].to_numpy()]
    missing = sorted(set(data.analytes) - set(fitted))
    if missing:
        raise DosingError(
            f"patient {rows['ID'].iloc[0]}: analyte(s) {missing} were not in the PK fit "
            f"(fitted: {fitted})"
        )
    return data


def _mu_sd(model: str, pred: np.ndarray, sigma: dict[str, np.ndarray], xp: Any = np) -> tuple:
    """Mean and SD of the residual error model on the likelihood's scale."""
    if model == "log_proportional":
        return xp.log(xp.maximum(pred, CONC_FLOOR_NG_ML)), sigma["sigma_prop"] + 0 * pred
    if model == "additive":
        return pred, sigma["sigma_add"] + 0 * pred
    return pred, xp.sqrt(sigma["sigma_add"] ** 2 + (sigma["sigma_prop"] * pred) ** 2)


def pk_loglik(
    models: Models, data: PKData, params: dict[str, np.ndarray], sigma: dict[str, np.ndarray]
) -> np.ndarray:
    """Log-likelihood of one patient's measurements under each draw (draw,).

    ``params`` (draw, 1, chain); ``sigma`` the residual SDs per observation, (observation,) or
    (draw, observation). Observed rows by the normal density, BLQ rows by the normal CDF at
    the LLOQ (M3), as in the population model.
    """
    spec = models.pk_spec
    n_s = next(iter(params.values())).shape[0]
    n_c = len(spec.chains)
    batch = max(1, _TERMS_PER_BATCH // max(1, data.layout.n_terms))
    value, lower = censored_observations(spec, data)
    censored = np.isfinite(lower)
    out = np.empty(n_s)
    doses = chain_doses(data.doses, {data.subjects[0]: 0}, spec)
    obs_p = data.obs["chain"].map({c: k for k, c in enumerate(spec.chains)}).to_numpy(np.int64)
    for lo in range(0, n_s, batch):
        hi = min(n_s, lo + batch)
        nb = hi - lo
        layout = build_layout(
            **tile_doses(doses, nb, n_c),
            obs_subject=tile_subjects(obs_p, nb, n_c),
            obs_time_h=np.tile(data.obs["TIME"].to_numpy(float), nb),
            obs_level=np.tile(data.obs["level"].to_numpy(np.int64), nb),
            n_subject=nb * n_c,
        )
        p = {k: v[lo:hi, 0, :].reshape(-1) for k, v in params.items()}
        pred = _chain_conc(spec, layout, p, conc=np_conc_ng_ml).reshape(nb, -1)
        sig = {k: v[lo:hi] if v.ndim == 2 else v for k, v in sigma.items()}
        mu, sd = _mu_sd(spec.spec["residual"]["model"], pred, sig)
        ll = np.where(
            censored[None, :],
            norm.logcdf(lower[None, :], mu, sd),
            norm.logpdf(value[None, :], mu, sd),
        )
        out[lo:hi] = ll.sum(axis=1)
    return out


def _systematic_resample(w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    u = (rng.random() + np.arange(n)) / n
    return np.searchsorted(cdf, u)


class PatientTarget:
    """One patient's PK posterior on the transformed scale (log; logit for fractions).

    Prior: the population-predictive draws of the patient's parameters (population
    uncertainty and between-subject variability) moment-matched as a multivariate normal over
    the entries that vary; the rest fixed. Likelihood: the patient's measurements with the
    residual SDs at their posterior medians. Both the Laplace importance sampler and the
    per-patient NUTS sample this same density.
    """

    def __init__(
        self, models: Models, data: PKData | None, proposal: dict[str, np.ndarray], post: Any
    ):
        spec = models.pk_spec
        self.models, self.data, self.proposal = models, data, proposal
        self.n_c = len(spec.chains)
        self.frac = {n for n in proposal if spec.kind(n) == "fraction"}
        self.free: list[tuple[str, int]] = []
        for name, v in proposal.items():
            for c in range(self.n_c):
                col = v[:, 0, c]
                if np.ptp(col) > 1e-12 * max(1.0, np.abs(col).max()):
                    self.free.append((name, c))
        x = np.column_stack([self._fwd(n, proposal[n][:, 0, c]) for n, c in self.free])
        self.mean = x.mean(axis=0)
        cov = np.atleast_2d(np.cov(x, rowvar=False))
        self.chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(self.free)))
        self.sigma: dict[str, np.ndarray] = {}
        if data is not None:
            analytes = data.obs["ANALYTE"].to_numpy()
            self.sigma = {
                k: post[k].median("sample").sel(analyte=analytes).to_numpy()
                for k in ("sigma_prop", "sigma_add")
                if k in post
            }

    @property
    def dim(self) -> int:
        return len(self.free)

    def _fwd(self, name: str, x: np.ndarray) -> np.ndarray:
        return logit(x) if name in self.frac else np.log(x)

    def params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Parameters (draw, 1, chain) at transformed values ``theta`` (draw, dim)."""
        theta = np.atleast_2d(theta)
        out = {}
        for name, v in self.proposal.items():
            arr = np.broadcast_to(v[:1], (len(theta), 1, self.n_c)).copy()
            for c in range(self.n_c):
                if (name, c) in self.free:
                    t = theta[:, self.free.index((name, c))]
                    arr[:, 0, c] = expit(t) if name in self.frac else np.exp(t)
            out[name] = arr
        return out

    def log_prior(self, theta: np.ndarray) -> np.ndarray:
        z = np.linalg.solve(self.chol, (np.atleast_2d(theta) - self.mean).T)
        return -0.5 * (z**2).sum(axis=0)

    def log_post(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        if self.data is None:  # no measurements: the prior alone
            return self.log_prior(theta)
        ll = pk_loglik(self.models, self.data, self.params(theta), self.sigma)
        return self.log_prior(theta) + ll

    def laplace(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mode and the inverse Hessian there (finite differences, vectorised)."""
        from scipy.optimize import minimize

        k, h = self.dim, 1e-4
        eye = np.eye(k)

        def grad(x: np.ndarray) -> np.ndarray:
            pts = np.vstack([x + h * eye, x - h * eye])
            v = self.log_post(pts)
            return (v[:k] - v[k:]) / (2 * h)

        def f(x: np.ndarray) -> tuple[float, np.ndarray]:
            return -float(self.log_post(x)[0]), -grad(x)

        # start from the best of a few prior draws (the prior mean can sit far from the data)
        starts = self.mean + (self.chol @ np.random.default_rng(0).standard_normal((k, 64))).T
        starts = np.vstack([self.mean, starts])
        x0 = starts[np.argmax(self.log_post(starts))]
        res = minimize(f, x0, jac=True, method="L-BFGS-B")
        mode = res.x
        # Hessian by central differences of the gradient, all points in one evaluation
        hh = 1e-3
        pts = []
        for j in range(k):
            for sgn in (1.0, -1.0):
                base = mode + sgn * hh * eye[j]
                pts += [base + h * eye, base - h * eye]
        v = self.log_post(np.vstack(pts)).reshape(k, 2, 2, k)
        g = (v[:, :, 0, :] - v[:, :, 1, :]) / (2 * h)  # (j, sign, k)
        hess = -(g[:, 0, :] - g[:, 1, :]) / (2 * hh)
        hess = 0.5 * (hess + hess.T)
        w, vec = np.linalg.eigh(hess)
        w = np.maximum(w, 1e-6 * max(1.0, w.max()))
        return mode, (vec / w) @ vec.T


def laplace_importance(
    target: PatientTarget, n_proposals: int, n_draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Importance sampling of the patient's posterior with a Student-t (5 df) proposal at the
    Laplace approximation (mode, inverse Hessian x 1.5), then once more at the weighted
    moments of that sample when its effective sample size is below a quarter of the proposals
    (one step of adaptive importance sampling: a mode the optimiser stopped short of, or a
    skewed posterior, otherwise costs the fast path). Returns ``n_draws`` resampled draws
    (transformed scale) and the effective sample size of the weights used."""
    from scipy.stats import multivariate_t

    mode, cov = target.laplace()
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(2):
        q = multivariate_t(loc=mode, shape=1.5 * cov, df=5, seed=rng)
        theta = np.atleast_2d(q.rvs(size=n_proposals)).reshape(n_proposals, target.dim)
        logw = target.log_post(theta) - q.logpdf(theta)
        logw = np.where(np.isfinite(logw), logw, -np.inf)
        w = np.exp(logw - logw.max())
        ess = float(w.sum() ** 2 / (w**2).sum())
        if best is None or ess > best[2]:
            best = (theta, w, ess)
        if ess >= 0.25 * n_proposals:
            break
        wn = w / w.sum()
        mode = wn @ theta
        centred = theta - mode
        cov = (centred * wn[:, None]).T @ centred + 1e-9 * np.eye(target.dim)
    theta, w, ess = best
    return theta[_systematic_resample(w, n_draws, rng)], ess


def nuts_patient(
    target: PatientTarget, n_draws: int, nuts: dict[str, Any], seed: int
) -> tuple[np.ndarray, int]:
    """Per-patient NUTS (PyMC) of the same density: ``n_draws`` draws (transformed scale) and
    the number of divergences."""
    import pymc as pm
    import pytensor.tensor as pt

    spec, data = target.models.pk_spec, target.data
    with pm.Model():
        z = pm.Normal("z", 0.0, 1.0, shape=target.dim)
        theta = pt.as_tensor_variable(target.mean) + pt.dot(pt.as_tensor_variable(target.chol), z)
        p: dict[str, Any] = {}
        for name, v in target.proposal.items():
            cols = []
            for c in range(target.n_c):
                if (name, c) in target.free:
                    t = theta[target.free.index((name, c))]
                    cols.append(pt.sigmoid(t) if name in target.frac else pt.exp(t))
                else:
                    cols.append(pt.as_tensor_variable(float(v[0, 0, c])))
            p[name] = pt.stack(cols)
        if data is not None:
            value, lower = censored_observations(spec, data)
            pred = _chain_conc(spec, data.layout, p, conc=pt_conc_ng_ml)
            mu, sd = _mu_sd(spec.spec["residual"]["model"], pred, target.sigma, xp=pt)
            pm.Censored(
                "y", pm.Normal.dist(mu=mu, sigma=sd), lower=lower, upper=None, observed=value
            )
        pm.Deterministic("theta", theta)
        idata = pm.sample(
            draws=nuts["draws"],
            tune=nuts["tune"],
            chains=nuts["chains"],
            cores=1,
            target_accept=nuts["target_accept"],
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
        )
    th = idata.posterior["theta"].stack(sample=("chain", "draw")).transpose("sample", ...)
    th = th.to_numpy()
    pick = np.linspace(0, th.shape[0] - 1, n_draws).round().astype(int)
    return th[pick], int(idata.sample_stats["diverging"].sum())


def individual_posterior(
    models: Models,
    patients: pd.DataFrame,
    concentrations: pd.DataFrame | None,
    cfg: dict[str, Any],
    seed: int,
    force: str | None = None,
) -> IndividualPosterior:
    """PK draws (sample, patient, chain) of every patient (see the module docstring).

    ``force``: ``"importance"`` or ``"nuts"`` uses that method for every patient with
    concentrations whatever the ESS (for tests and comparisons).
    """
    n = cfg["pk_draws"]
    # Named streams of the seed alone, each restarted for every patient: a patient's draws
    # depend on their own inputs and the seed, never on their row or the other patients.
    ss_pop, ss_prop, ss_is, ss_nuts = np.random.SeedSequence(seed).spawn(4)
    wt = patients["WT"].to_numpy(float)
    cyp = patients["CYP2B6_CLASS"].fillna("NM").to_numpy(str)
    params, _ = _population_draws(models, wt, cyp, n, np.random.default_rng(ss_pop))
    method = ["population"] * len(patients)
    ess = np.full(len(patients), float(n))
    notes: list[str] = []
    if concentrations is None or concentrations.empty:
        return IndividualPosterior(params, method, ess, notes)
    conc = concentrations.assign(ID=concentrations["ID"].astype(str))
    measured = set(conc["ID"])
    for k, sid in enumerate(patients["ID"]):
        if sid not in measured:
            continue
        rows = conc[conc["ID"] == sid].copy()
        rows["WT"] = wt[k]
        rows["CYP2B6_CLASS"] = cyp[k]
        data = _patient_pkdata(models, rows)
        prop, prop_post = _population_draws(
            models, wt[k : k + 1], cyp[k : k + 1], cfg["proposals"], np.random.default_rng(ss_prop)
        )
        target = PatientTarget(models, data, prop, prop_post)
        theta = None
        if force != "nuts":
            rng_is = np.random.default_rng(ss_is)
            theta, ess[k] = laplace_importance(target, cfg["proposals"], n, rng_is)
            method[k] = "importance"
        if force == "nuts" or (force is None and ess[k] < cfg["min_ess"]):
            child = int(ss_nuts.generate_state(1)[0])
            theta, div = nuts_patient(target, n, cfg["nuts"], child)
            method[k] = "nuts"
            if div:
                notes.append(f"patient {sid}: {div} divergence(s) in the per-patient NUTS")
        draws = target.params(theta)
        for name in params:
            params[name][:, k, :] = draws[name][:, 0, :]
    return IndividualPosterior(params, method, ess, notes)


# --------------------------------------------------------------------------------------
# Exposures under the candidate regimens
# --------------------------------------------------------------------------------------


def _auc_times(reg_shapes: list[Regimen], endpoint: dict[str, Any]) -> dict[int, list[float]]:
    """Times at which a unit infusion's AUC is needed, per number of sessions."""
    out = {}
    for r in reg_shapes:
        n, step, d = r.sessions, r.interval_h, r.duration_h
        h = float(endpoint["hours_after"])
        end = h if endpoint["reference"] == "first_dose" else step * (n - 1) + d + h
        out[n] = [end - step * k for k in range(n)]
    return out


#: exp(-36) = 2e-16: a tail this many slowest time constants long is below double precision.
TAIL_RATE_TIMES = 36.0


def _slowest_rate(spec: PKSpec, p: dict[str, np.ndarray]) -> np.ndarray:
    """The smallest rate constant (1/h) of each pseudo-subject's system: the parent's terminal
    eigenvalue and every metabolite's elimination rate (and absorption, if any)."""
    mets = spec.structure["metabolites"]
    cl = p["cl_f"] + p["cl_o"] if mets else p["cl"]
    lams, _ = np_disposition(cl, p["vc"], p.get("q"), p.get("vp"), p.get("q2"), p.get("vp2"))
    rates = [np.min(np.stack(lams), axis=0)]
    if "NK" in mets:
        rates.append(p["cl_nk"] / p["v_nk"])
    if "HNK" in mets:
        rates.append(p["cl_hnk"] / p["v_hnk"])
    if "ka" in p:
        rates.append(p["ka"])
    return np.min(np.stack([np.broadcast_to(r, cl.shape) for r in rates]), axis=0)


def _unit_curves(
    spec: PKSpec,
    params: dict[str, np.ndarray],
    duration: float,
    peak_times: np.ndarray,
    auc_times: np.ndarray,
    levels: list[int],
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Parent concentration at ``peak_times`` and AUC of each level at ``auc_times`` after
    a 1-mg infusion of ``duration`` h into each chain: (sample, patient, chain, time)."""
    n_s, n_p, n_c = next(iter(params.values())).shape
    n_pseudo = n_s * n_p * n_c
    flat = {k: v.reshape(-1) for k, v in params.items()}
    n_obs = peak_times.size + auc_times.size * len(levels)
    batch = max(1, _TERMS_PER_BATCH // max(1, n_obs))
    peak = np.zeros((n_pseudo, peak_times.size))
    aucs = {lev: np.zeros((n_pseudo, auc_times.size)) for lev in levels}
    pos = auc_times > 0
    for lo in range(0, n_pseudo, batch):
        hi = min(n_pseudo, lo + batch)
        nb = hi - lo
        subj = np.arange(nb)
        p = {k: v[lo:hi] for k, v in flat.items()}
        dose = dict(
            dose_subject=subj,
            dose_time_h=np.zeros(nb),
            dose_amt_mg=np.ones(nb),
            dose_rate_mg_h=np.full(nb, 1.0 / duration),
            dose_route="central",
            n_subject=nb,
        )
        layout = build_layout(
            **dose,
            obs_subject=np.repeat(subj, peak_times.size),
            obs_time_h=np.tile(peak_times, nb),
            obs_level=0,
        )
        peak[lo:hi] = _chain_conc(spec, layout, p, conc=np_conc_ng_ml).reshape(nb, -1)
        if pos.any():
            # Beyond TAIL_RATE_TIMES / (slowest rate) after the infusion every AUC of this
            # pseudo-subject equals its AUC to infinity to machine precision: one evaluation
            # (at the latest time) stands for all of them.
            lam = _slowest_rate(spec, p)
            t = auc_times[pos]
            tail = lam[:, None] * (t[None, :] - duration) > TAIL_RATE_TIMES
            last = t.size - 1
            need = ~tail
            need[:, last] = True
            rows, cols = np.nonzero(need)
            for lev in levels:
                layout = build_layout(
                    **dose,
                    obs_subject=rows,
                    obs_time_h=t[cols],
                    obs_level=lev + 1,
                )
                vals = _chain_conc(spec, layout, p, conc=_auc_conc(lev))
                out = np.empty((nb, t.size))
                out[rows, cols] = vals
                out = np.where(tail, out[:, [last]], out)
                aucs[lev][lo:hi, pos] = out
    shape = (n_s, n_p, n_c)
    return peak.reshape(*shape, -1), {k: v.reshape(*shape, -1) for k, v in aucs.items()}


def _exposure_target(models: Models) -> tuple[int, np.ndarray] | None:
    """(chain level, chain weights) of the response model's AUC metric, or None."""
    spec = models.pk_spec
    if not models.resp_spec.exposure:
        return None
    analyte = models.resp_spec.exposure["metric"].removeprefix("AUC_")
    chains = list(spec.chains)
    if analyte in SUM_ANALYTES and spec.structure["stereo"] == "enantiomers":
        return SUM_ANALYTES.index(analyte), np.ones(len(chains))
    names = CHAIN_ANALYTES[spec.structure["stereo"]]
    for c, chain in enumerate(chains):
        if analyte in names[chain]:
            w = np.zeros(len(chains))
            w[c] = 1.0
            return names[chain].index(analyte), w
    raise DosingError(f"exposure metric AUC_{analyte} is not an analyte of {spec.name}")


@dataclass
class ResponseDraws:
    """Response-model draws, each paired with one PK draw, and the fit's standardisation."""

    intercept: np.ndarray  # (sample, indication)
    b_exposure: np.ndarray | None  # (sample, indication)
    b: dict[str, np.ndarray]  # column -> (sample, indication)
    cyp: np.ndarray  # (sample, 3): 0 for NM
    centre: dict[str, float]
    scale: dict[str, float]
    exposure_centre: dict[str, float]
    exposure_scale: float
    indications: list[str]


def response_draws(models: Models, n: int, rng: np.random.Generator) -> ResponseDraws:
    post = _take(models.resp_posterior, n, rng)
    spec, const = models.resp_spec, models.resp_const
    p = PREFIX["responder"]
    inds = [str(g) for g in post["indication"].to_numpy()]

    def arr(name: str) -> np.ndarray:
        return post[name].transpose("sample", "indication").to_numpy()

    cyp = np.zeros((n, len(CYP2B6_CLASSES)))
    if spec.spec["cyp2b6"]:
        cyp[:, 1:] = post[f"{p}cyp2b6"].transpose("sample", "cyp2b6_class").to_numpy()
    b = {t["column"]: arr(f"{p}b_{t['name']}") for t in spec.terms() if t["name"] != "exposure"}
    return ResponseDraws(
        intercept=arr(f"{p}intercept"),
        b_exposure=arr(f"{p}b_exposure") if spec.exposure else None,
        b=b,
        cyp=cyp,
        centre={c: float(const[f"centre_{c.lower()}"]) for c in b},
        scale={c: float(const[f"scale_{c.lower()}"]) for c in b},
        exposure_centre=(
            dict(zip(inds, map(float, const["exposure_centre"].to_numpy()), strict=True))
            if spec.exposure
            else {}
        ),
        exposure_scale=float(const["exposure_scale"]) if spec.exposure else 1.0,
        indications=inds,
    )


def _baseline_logit(
    rd: ResponseDraws, patients: pd.DataFrame
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logit without the exposure term (sample, patient) and each factor's contribution."""
    g = patients["INDICATION"].map({k: i for i, k in enumerate(rd.indications)}).to_numpy(int)
    lin = rd.intercept[:, g].copy()
    parts = {}
    for col, b in rd.b.items():
        z = (patients[col].to_numpy(float) - rd.centre[col]) / rd.scale[col]
        parts[col] = b[:, g] * z[None, :]
        lin += parts[col]
    cls = patients["CYP2B6_CLASS"].fillna("NM").map(CYP2B6_CLASSES.index).to_numpy(int)
    parts["CYP2B6"] = rd.cyp[:, cls]
    lin += parts["CYP2B6"]
    return lin, parts


def _by_patient(x: np.ndarray) -> np.ndarray:
    """(sample, patient) draws as contiguous rows (patient, sample): each patient's statistics
    are then computed the same way (and to the same bits) whoever else is in the array."""
    return np.ascontiguousarray(np.asarray(x, float).T)


def _mcse_share(exceeded: np.ndarray, n_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of draws (patient, sample) above a limit and its Monte Carlo standard error over
    ``n_eff`` effective draws, at the Jeffreys estimate (k + 1/2) / (n + 1) so that 0 of n
    draws reads as the resolution of the draws, not as a certainty."""
    k, n = exceeded.sum(axis=1), exceeded.shape[1]
    share = k / n
    jeff = (k + 0.5) / (n + 1.0)
    return share, np.sqrt(jeff * (1.0 - jeff) / n_eff)


#: A regimen's description and its evaluation: shared by both tables.
_REGIMEN_FIELDS = (
    "FAMILY",
    "REGIMEN",
    "FORMULATION",
    "DOSE_MG_KG",
    "RATE_MG_H",
    "DURATION_H",
    "SESSIONS",
    "INTERVAL_H",
    "AMOUNT_MG",
    "TOTAL_MG",
    "P_RESPONSE",
    "P_RESPONSE_LO",
    "P_RESPONSE_HI",
    "P_RESPONSE_MCSE",
    "EXPOSURE_MEDIAN",
    "EXPOSURE_LO",
    "EXPOSURE_HI",
    "PEAK_KET_MEDIAN",
    "PEAK_KET_LO",
    "PEAK_KET_HI",
    "CUM_AUC_KET_MEDIAN",
    "CUM_AUC_KET_LO",
    "CUM_AUC_KET_HI",
    "P_PEAK_EXCEEDED",
    "P_PEAK_EXCEEDED_MCSE",
    "P_CUM_EXCEEDED",
    "P_CUM_EXCEEDED_MCSE",
)

#: Columns of the per-candidate table (regimens.csv, with "patient" the row of the patient).
REGIMEN_COLUMNS = (
    "patient",
    "ID",
    "INDICATION",
    *_REGIMEN_FIELDS,
    "EXPOSURE_LOGIT",
    "EXPOSURE_Z",
    "ACCEPTABLE",
    "P_RESPONSE_GAP_SE",
)


def evaluate_regimens(
    models: Models,
    patients: pd.DataFrame,
    post: IndividualPosterior,
    grid: list[Regimen],
    cfg: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per (patient, regimen open to the patient): P(response), exposures with their
    intervals, P(limits) with their Monte Carlo errors (columns :data:`REGIMEN_COLUMNS`; no
    row for a patient no regimen is open to).

    ``P_RESPONSE_GAP_SE`` is the Monte Carlo standard error of the difference between the
    patient's best acceptable regimen's P(response) and this one's, paired over the draws the
    two share (NaN when no regimen is acceptable). Monte Carlo errors count
    ``min(draws, ESS)`` effective draws per patient.

    Also returns per patient (mean over draws) the logit contribution of each biomarker and of
    CYP2B6 against a typical patient, each biomarker's standardised value (``<COL>_Z``: its
    sign says high or low against the fit's centre) and ``TYPICAL_P``, the response
    probability of a typical patient of the indication at the trial's mean exposure.
    """
    spec = models.pk_spec
    n_s = next(iter(post.params.values())).shape[0]
    rd = response_draws(models, n_s, np.random.default_rng(seed))
    base, parts = _baseline_logit(rd, patients)
    target = _exposure_target(models)
    safety, prob = cfg["safety"], cfg["decision"]["prob"]
    q = [(1 - prob) / 2, 0.5, (1 + prob) / 2]
    w_form = {
        f: np.array([DOSE_TARGETS[f].get(c, 0.0) for c in spec.chains])
        for f in {r.formulation for r in grid}
    }
    levels = sorted({0} | ({target[0]} if target else set()))
    frames: list[pd.DataFrame] = []
    p_draws: list[np.ndarray] = []
    wt = patients["WT"].to_numpy(float)
    n_eff = np.minimum(float(n_s), np.asarray(post.ess, float))
    ddof = 1 if n_s > 1 else 0
    for ind in sorted(set(patients["INDICATION"])):
        endpoint = models.endpoints[ind]
        regs = [r for r in grid if r.indication == ind]
        # One unit-infusion computation per (duration, interval), for the patients that any
        # of its regimens is open to.
        for (dur, step), shape_regs in _group(regs, lambda r: (r.duration_h, r.interval_h)):
            masks = [open_mask(r, patients) for r in shape_regs]
            pidx = np.flatnonzero(np.logical_or.reduce(masks))
            if not pidx.size:
                continue
            sub = {k: v[:, pidx, :] for k, v in post.params.items()}
            m_max = max(r.sessions for r in shape_regs)
            peak_t = dur + step * np.arange(m_max)
            per_n = _auc_times(shape_regs, endpoint)
            auc_t = np.unique(np.concatenate([np.asarray(v) for v in per_n.values()]))
            peak1, auc1 = _unit_curves(spec, sub, dur, peak_t, auc_t, levels)
            for reg, mask in zip(shape_regs, masks, strict=True):
                open_to = mask[pidx]
                if not open_to.any():
                    continue
                keep = np.flatnonzero(open_to)
                rows = pidx[keep]
                w = w_form[reg.formulation]
                amt = reg.amount_mg(wt[pidx])  # (patient,)
                n = reg.sessions
                # peak of total ketamine: the end of the last infusion
                peak = (peak1[..., :n].sum(-1) * w).sum(-1) * amt[None, :]
                idx = np.searchsorted(auc_t, per_n[n])

                cum = _course_auc(auc1[0], idx, w, amt)
                lin = base[:, pidx]
                expo_logit = np.zeros_like(lin)
                expo = np.full_like(peak, np.nan)
                x = np.zeros_like(lin)
                if target is not None:
                    lev, wc = target
                    expo = _course_auc(auc1[lev], idx, w * wc, amt)
                    g = rd.indications.index(ind)
                    with np.errstate(divide="ignore"):
                        x = (np.log(expo) - rd.exposure_centre[ind]) / rd.exposure_scale
                    # no exposure at all (e.g. arketamine for an S-chain metric): far below
                    x = np.where(np.isfinite(x), x, -50.0)
                    expo_logit = rd.b_exposure[:, [g]] * x
                p, peak, cum, expo, expo_logit, x = (
                    _by_patient(a[:, keep])
                    for a in (expit(lin + expo_logit), peak, cum, expo, expo_logit, x)
                )
                ne = n_eff[rows]
                p_peak, se_peak = _mcse_share(peak > safety["peak_ketamine_ng_ml"], ne)
                p_cum, se_cum = _mcse_share(cum > safety["cumulative_auc_ng_h_ml"], ne)
                pq, eq, kq, cq = (np.quantile(a, q, axis=1) for a in (p, expo, peak, cum))
                m = keep.size
                p_draws.append(p)
                frames.append(
                    pd.DataFrame(
                        {
                            "patient": rows,
                            "ID": patients["ID"].to_numpy()[rows],
                            "INDICATION": ind,
                            "FAMILY": reg.family,
                            "REGIMEN": reg.label,
                            "FORMULATION": reg.formulation,
                            "DOSE_MG_KG": np.full(
                                m, np.nan if reg.dose_mg_kg is None else reg.dose_mg_kg
                            ),
                            "RATE_MG_H": np.full(
                                m, np.nan if reg.rate_mg_h is None else reg.rate_mg_h
                            ),
                            "DURATION_H": reg.duration_h,
                            "SESSIONS": n,
                            "INTERVAL_H": reg.interval_h,
                            "AMOUNT_MG": amt[keep],
                            "TOTAL_MG": amt[keep] * n,
                            "P_RESPONSE": p.mean(axis=1),
                            "P_RESPONSE_LO": pq[0],
                            "P_RESPONSE_HI": pq[2],
                            "P_RESPONSE_MCSE": p.std(axis=1, ddof=ddof) / np.sqrt(ne),
                            "EXPOSURE_MEDIAN": eq[1],
                            "EXPOSURE_LO": eq[0],
                            "EXPOSURE_HI": eq[2],
                            "PEAK_KET_MEDIAN": kq[1],
                            "PEAK_KET_LO": kq[0],
                            "PEAK_KET_HI": kq[2],
                            "CUM_AUC_KET_MEDIAN": cq[1],
                            "CUM_AUC_KET_LO": cq[0],
                            "CUM_AUC_KET_HI": cq[2],
                            "P_PEAK_EXCEEDED": p_peak,
                            "P_PEAK_EXCEEDED_MCSE": se_peak,
                            "P_CUM_EXCEEDED": p_cum,
                            "P_CUM_EXCEEDED_MCSE": se_cum,
                            "EXPOSURE_LOGIT": expo_logit.mean(axis=1),
                            "EXPOSURE_Z": x.mean(axis=1),
                        }
                    )
                )
    contrib = {k: _by_patient(v).mean(axis=1) for k, v in parts.items()}
    for col in rd.b:
        contrib[f"{col}_Z"] = (patients[col].to_numpy(float) - rd.centre[col]) / rd.scale[col]
        contrib[f"{col}_MEAN"] = np.full(len(patients), rd.centre[col])
    g_all = patients["INDICATION"].map({k: i for i, k in enumerate(rd.indications)}).to_numpy(int)
    contrib["TYPICAL_P"] = _by_patient(expit(rd.intercept[:, g_all])).mean(axis=1)
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in REGIMEN_COLUMNS})
        return empty.astype({"patient": int, "ACCEPTABLE": bool}), contrib
    table = pd.concat(frames, ignore_index=True)
    draws = np.vstack(p_draws)  # (row, sample), aligned with the table
    table["ACCEPTABLE"] = (table["P_PEAK_EXCEEDED"] <= safety["peak_tolerated_probability"]) & (
        table["P_CUM_EXCEEDED"] <= safety["cumulative_tolerated_probability"]
    )
    order = [
        "patient",
        "FAMILY",
        "FORMULATION",
        "DURATION_H",
        "SESSIONS",
        "DOSE_MG_KG",
        "RATE_MG_H",
    ]
    perm = table.sort_values(order, kind="stable").index.to_numpy()
    table, draws = table.iloc[perm].reset_index(drop=True), draws[perm]
    # The paired Monte Carlo error of each candidate against the patient's best acceptable
    # regimen (the first of the highest in the table's order): what the tie rule reads.
    score = table["P_RESPONSE"].where(table["ACCEPTABLE"], -np.inf)
    best = table["patient"].map(score.groupby(table["patient"]).idxmax()).to_numpy()
    gap = draws[best] - draws
    se = gap.std(axis=1, ddof=ddof) / np.sqrt(n_eff[table["patient"].to_numpy()])
    has_ok = table.groupby("patient")["ACCEPTABLE"].transform("any").to_numpy()
    table["P_RESPONSE_GAP_SE"] = np.where(has_ok, se, np.nan)
    return table[list(REGIMEN_COLUMNS)], contrib


def _course_auc(unit: np.ndarray, idx: np.ndarray, w: np.ndarray, amt: np.ndarray) -> np.ndarray:
    """AUC (sample, patient) of a course from unit-infusion AUCs (sample, patient, chain, time):
    superposition over the sessions (times ``idx``), chain weights ``w``, amount ``amt``."""
    return (unit[..., idx].sum(-1) * w).sum(-1) * amt[None, :]


def _group(items: list[Regimen], key) -> list[tuple[Any, list[Regimen]]]:
    out: dict[Any, list[Regimen]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return list(out.items())


# --------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------

RECOMMENDATION_COLUMNS = (
    "ID",
    "INDICATION",
    "SETTING",
    "METHOD",
    "ESS",
    "STATUS",
    "RECOMMENDED",
    *_REGIMEN_FIELDS,
    "N_CANDIDATES",
    "N_ACCEPTABLE",
    "N_TIED",
    "BEST_P_RESPONSE_ANY",
    "LIKELY_NON_RESPONDER",
    "DRIVER",
    "REASON",
)
#: STATUS of a patient's row.
STATUS_RECOMMENDED = "recommended"
STATUS_CAPS = "no regimen within the patient's caps"
STATUS_SETTING = "no regimen for the patient's indication and setting"
STATUS_SAFETY = "no regimen within the safety limits"
#: A factor is named as a driver when it lowers the response logit by at least this much
#: (mean over the draws) against a typical patient of the indication.
DRIVER_MIN_LOGIT = 0.1
#: Covariates the response models use: what the driver calls them, and their unit.
_FACTOR_NAMES = {"DSER": ("D-serine", "uM"), "MG": ("Mg", "mmol/L")}
_NO_DRIVER = "none (typical patient for the indication)"


def _driver(
    patient: pd.Series,
    contrib: dict[str, float],
    expo_logit: float,
    metric: str,
    expo_z: float = -1.0,
) -> tuple[str, float]:
    """The factor that lowers the response logit most against a typical patient of the
    indication (biomarkers at the fitted trial's means, CYP2B6 NM, the trial's mean exposure),
    or ``("", 0)`` when none lowers it by :data:`DRIVER_MIN_LOGIT`.

    A factor's contribution is its fitted coefficient times the patient's standardised value
    (mean over draws), so it is negative only when the fitted sign and the patient's side of
    the mean together lower the response; the text calls the value high or low from that side
    (``<COL>_Z`` in ``contrib``; ``expo_z`` for the exposure), never from the coefficient."""
    factors = {
        k: v for k, v in contrib.items() if not k.endswith(("_Z", "_MEAN")) and k != "TYPICAL_P"
    }
    name, value = min({"exposure": expo_logit, **factors}.items(), key=lambda kv: kv[1])
    if value > -DRIVER_MIN_LOGIT:
        return "", value
    if name == "exposure":
        side = "low" if expo_z < 0 else "high"
        cls = patient.get("CYP2B6_CLASS")
        why = f"; CYP2B6 {cls} metaboliser" if side == "low" and cls in ("IM", "PM") else ""
        return f"{side} predicted {metric.removeprefix('AUC_')} exposure{why}", value
    if name == "CYP2B6":
        return f"CYP2B6 {patient['CYP2B6_CLASS']} class", value
    label, unit = _FACTOR_NAMES.get(name, (name, ""))
    side = "high" if contrib.get(f"{name}_Z", 0.0) > 0 else "low"
    text = f"{side} {label} ({patient[name]:.3g}{' ' + unit if unit else ''}"
    mean = contrib.get(f"{name}_MEAN")
    text += f", trial mean {mean:.3g})" if mean is not None else ")"
    return text, value


def _closed(pat: pd.Series, grid: list[Regimen] | None) -> tuple[str, str]:
    """STATUS and REASON of a patient no candidate regimen is open to."""
    one = pd.DataFrame([pat])
    caps = {
        c: float(pat[c])
        for c in ("MAX_DOSE_MG_KG", "MAX_RATE_MG_H")
        if c in pat.index and pd.notna(pat[c])
    }
    fits = [r for r in grid or [] if open_mask(r, one.drop(columns=list(caps)))[0]]
    if grid is not None and not fits:
        return STATUS_SETTING, (
            f"no candidate regimen family covers {pat['INDICATION']} in the "
            f"{pat['SETTING']} setting (dosing.regimens)"
        )
    if not caps:
        return STATUS_SETTING, "no candidate regimen is open to this patient"
    smallest = []
    if fits and "MAX_DOSE_MG_KG" in caps:
        doses = [r.dose_mg_kg for r in fits if r.dose_mg_kg is not None]
        smallest += [f"smallest candidate dose {min(doses):g} mg/kg"] if doses else []
    if fits and "MAX_RATE_MG_H" in caps:
        rates = [r.rate_mg_h for r in fits if r.rate_mg_h is not None]
        smallest += [f"smallest candidate rate {min(rates):g} mg/h"] if rates else []
    given = ", ".join(f"{k} {v:g}" for k, v in caps.items())
    more = f"; {', '.join(smallest)}" if smallest else ""
    return STATUS_CAPS, f"every candidate regimen lies above the patient's caps ({given}{more})"


def decide(
    table: pd.DataFrame,
    patients: pd.DataFrame,
    contrib: dict[str, np.ndarray],
    post: IndividualPosterior,
    cfg: dict[str, Any],
    metric: str,
    grid: list[Regimen] | None = None,
) -> pd.DataFrame:
    """The recommended regimen of every patient, with why (see the module docstring).

    Every patient gets a row; one without a recommendation says why in ``STATUS`` and
    ``REASON`` (caps, setting or safety limits) with the regimen and probabilities empty.
    ``grid`` (the candidate regimens) lets the reason tell caps from an uncovered setting.
    """
    dec, safety = cfg["decision"], cfg["safety"]
    k_se = dec["tie_mcse"]
    out = []
    by_patient = dict(tuple(table.groupby("patient", sort=False)))
    for i, (_, pat) in enumerate(patients.iterrows()):
        rows = by_patient.get(i)
        base = {
            "ID": pat["ID"],
            "INDICATION": pat["INDICATION"],
            "SETTING": pat["SETTING"],
            "METHOD": post.method[i],
            "ESS": round(float(post.ess[i]), 1),
            "RECOMMENDED": False,
            "LIKELY_NON_RESPONDER": False,
            "DRIVER": "",
        }
        if rows is None:
            status, reason = _closed(pat, grid)
            out.append(
                {**base, "STATUS": status, "N_CANDIDATES": 0, "N_ACCEPTABLE": 0, "REASON": reason}
            )
            continue
        ok = rows[rows["ACCEPTABLE"]]
        best_any = float(rows["P_RESPONSE"].max())
        c = {k: float(v[i]) for k, v in contrib.items()}
        if ok.empty:
            out.append(
                {
                    **base,
                    "STATUS": STATUS_SAFETY,
                    "N_CANDIDATES": len(rows),
                    "N_ACCEPTABLE": 0,
                    "BEST_P_RESPONSE_ANY": best_any,
                    "REASON": (
                        f"each of the {len(rows)} candidate regimens exceeds a safety limit "
                        "with more than its tolerated probability (lowest P(peak > "
                        f"{safety['peak_ketamine_ng_ml']:g} ng/mL) "
                        f"{rows['P_PEAK_EXCEEDED'].min():.2f}, tolerated "
                        f"{safety['peak_tolerated_probability']:g}; lowest P(cumulative AUC > "
                        f"{safety['cumulative_auc_ng_h_ml']:g} ng h/mL) "
                        f"{rows['P_CUM_EXCEEDED'].min():.2f}, tolerated "
                        f"{safety['cumulative_tolerated_probability']:g})"
                    ),
                }
            )
            continue
        best = float(ok["P_RESPONSE"].max())
        # Equally good: within the margin of the best, or within k_se Monte Carlo standard
        # errors of the paired difference; then the lowest cumulative exposure, the smaller
        # amount, and the table's (grid) order.
        tol = np.maximum(dec["margin"], k_se * ok["P_RESPONSE_GAP_SE"].fillna(0.0))
        tied = ok[best - ok["P_RESPONSE"] <= tol]
        chosen = tied.sort_values(["CUM_AUC_KET_MEDIAN", "TOTAL_MG"], kind="stable").iloc[0]
        flag = best < dec["min_p_response"]
        # a flagged patient's reason is read at the best acceptable regimen (a cheaper tied
        # one would blame its lower exposure for what no acceptable dose overcomes)
        at = ok.loc[ok["P_RESPONSE"].idxmax()] if flag else chosen
        driver, _ = _driver(pat, c, float(at["EXPOSURE_LOGIT"]), metric, float(at["EXPOSURE_Z"]))
        if flag and not driver:
            driver = (
                f"no single factor lowers it by {DRIVER_MIN_LOGIT:g} on the logit scale: "
                f"response is unlikely at every acceptable regimen (best {best:.2f}; a "
                f"typical {pat['INDICATION']} patient {c.get('TYPICAL_P', np.nan):.2f} at the "
                "trial's mean exposure)"
            )
        reason = (
            f"highest P(response) within the safety limits (best {best:.2f}); lowest "
            f"cumulative exposure among {len(tied)} regimen(s) as good as it (within "
            f"{dec['margin']:.2f} or {k_se:g} Monte Carlo SE of the difference)"
        )
        if flag:
            reason += f"; below {dec['min_p_response']:.2f}: likely non-responder"
        out.append(
            {
                **base,
                **{k: chosen[k] for k in RECOMMENDATION_COLUMNS if k in chosen.index},
                "STATUS": STATUS_RECOMMENDED,
                "RECOMMENDED": True,
                "N_CANDIDATES": len(rows),
                "N_ACCEPTABLE": len(ok),
                "N_TIED": len(tied),
                "BEST_P_RESPONSE_ANY": best_any,
                "LIKELY_NON_RESPONDER": flag,
                "DRIVER": driver or _NO_DRIVER,
                "REASON": reason,
            }
        )
    rec = pd.DataFrame(out, columns=list(RECOMMENDATION_COLUMNS))
    return rec.astype({"RECOMMENDED": bool, "LIKELY_NON_RESPONDER": bool})


@dataclass
class Recommendation:
    """The result for a set of patients."""

    recommendations: pd.DataFrame  # one row per patient
    regimens: pd.DataFrame  # one row per (patient, candidate regimen)
    posterior: IndividualPosterior
    notes: list[str]


def recommend(
    models: Models,
    patients: pd.DataFrame,
    cfg: dict[str, Any],
    seed: int,
    concentrations: pd.DataFrame | None = None,
    force: str | None = None,
) -> Recommendation:
    """Individual posteriors, every candidate regimen, and the decision, for checked patients."""
    grid = regimen_grid(cfg)
    if patients.empty:
        return Recommendation(
            pd.DataFrame(columns=list(RECOMMENDATION_COLUMNS)),
            pd.DataFrame(columns=[c for c in REGIMEN_COLUMNS if c != "patient"]),
            IndividualPosterior({}, [], np.zeros(0)),
            [],
        )
    post = individual_posterior(models, patients, concentrations, cfg, seed, force)
    table, contrib = evaluate_regimens(models, patients, post, grid, cfg, seed + 1)
    metric = models.resp_spec.exposure["metric"] if models.resp_spec.exposure else "AUC_HNK"
    rec = decide(table, patients, contrib, post, cfg, metric, grid)
    return Recommendation(rec, table.drop(columns="patient"), post, post.notes)


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------

#: What :func:`write_recommendation` writes into its folder (replaced as a whole).
OUTPUT_ENTRIES = ("recommendations.csv", "regimens.csv", "summary.md", "notes.json", "patients")
#: Without ``figures``, :func:`write_recommendation` draws the per-patient figures of cohorts up
#: to this many patients: a figure costs about 0.15 s on 2 cores, the rest of a patient's
#: outputs a few milliseconds (benchmarks/README.md, dose recommendations).
FIGURES_AUTO_MAX = 100
#: Gate files of a fit, in the order they are looked for: the workflow's enforced gate check,
#: then the diagnostics' own gate.
GATE_FILES = ("gate_check.json", "gate.json")


@dataclass
class Caveats:
    """What a reader must see beside the numbers: the patients file's warnings (all of them,
    and by patient) and the reference models that did not pass their diagnostic gate (a
    failed gate the config let the run go past, or no gate file at all)."""

    warnings: list[str] = field(default_factory=list)
    patient_warnings: dict[str, list[str]] = field(default_factory=dict)
    gates: dict[str, list[str]] = field(default_factory=dict)  # model -> failed checks

    @classmethod
    def from_warnings(
        cls,
        problems: list[Problem],
        patients: pd.DataFrame,
        source: str | Path,
        gates: dict[str, list[str]] | None = None,
    ) -> Caveats:
        """Caveats of :func:`read_patients`'s warnings (each located by file line) and gates."""
        by_patient: dict[str, list[str]] = {}
        for p in problems:
            for line in p.lines:
                row = patients.iloc[line - 2]
                value = row.get(p.column, "")
                value = f"{value:g}" if isinstance(value, float) else str(value)
                text = f"{p.message}: {p.column} {value} ({source}, line {line})"
                by_patient.setdefault(str(row["ID"]), []).append(text)
        return cls([p.format(str(source)) for p in problems], by_patient, dict(gates or {}))

    def messages(self) -> list[str]:
        """Each warning and each failed gate as a line for stderr or a job's log."""
        return [f"warning: {w}" for w in self.warnings] + [
            f"warning: {m} did not pass the diagnostic gate: {'; '.join(f)}"
            for m, f in self.gates.items()
        ]

    def gate_text(self) -> str:
        """``passed``, or each model with its failed checks."""
        if not self.gates:
            return "passed"
        return " | ".join(f"{m} FAILED: {'; '.join(f)}" for m, f in self.gates.items())


def gate_failures(paths: dict[str, str | Path | None]) -> dict[str, list[str]]:
    """Failed checks by model, from each model's gate file (``gate_failures`` of gate.json or
    gate_check.json; a path may be a fit's folder, where :data:`GATE_FILES` are looked for). A
    model whose gate passed has no entry; one without a gate file is reported as unchecked."""

    out = {}
    for model, path in paths.items():
        path = Path(path) if path is not None else None
        if path is not None and path.is_dir():
            path = next((path / f for f in GATE_FILES if (path / f).is_file()), None)
        if path is None or not path.is_file():
            out[model] = ["no gate file (gate_check.json or gate.json): diagnostics not checked"]
            continue
        try:
            failures = [str(f) for f in json.loads(path.read_text("utf-8"))["gate_failures"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise DosingError(f"{path}: not a gate file of a fit ({exc!r})") from None
        if failures:
            out[model] = failures
    return out


def patient_file_names(ids: Any) -> dict[str, str]:
    """File name (without suffix) of each patient ID, unique and deterministic.

    Characters other than ASCII letters, digits, ``-`` and ``_`` become ``_`` (and the name is
    cut at 64 characters). When that changed the ID, or two IDs' names are equal ignoring case
    (they would be one file on a case-insensitive file system), the name gets ``.`` and the
    first 10 hex digits of the raw ID's SHA-256: ``A/1`` is ``A_1.<hash>``, and ``A_1``, which
    would collide with it, ``A_1.<hash of A_1>``. The ``.`` never occurs in a plain name, so a
    suffixed name cannot equal another patient's plain one.
    """

    ids = list(dict.fromkeys(map(str, ids)))
    stem = {i: re.sub(r"[^A-Za-z0-9_-]", "_", i)[:64] for i in ids}
    folded = pd.Series([s.casefold() for s in stem.values()]).value_counts()
    return {
        i: s
        if s == i and folded[s.casefold()] == 1
        else f"{s}.{hashlib.sha256(i.encode()).hexdigest()[:10]}"
        for i, s in stem.items()
    }


def check_output_dir(out: str | Path, inputs: list[str | Path | None]) -> None:
    """Refuse, before anything is computed, an output folder :func:`write_recommendation`
    must not replace: one that holds anything but its own outputs (another folder's files,
    e.g. the patients file's or a run's), one that holds an input, a path below a file, and
    a place that cannot be written (its nearest existing folder is tried)."""

    from .io import check_outputs

    out = Path(out)
    given = [Path(p) for p in inputs if p is not None]
    check_outputs([out / name for name in OUTPUT_ENTRIES], given)
    rule = "the output folder is replaced as a whole; give a new folder or an earlier output"
    if out.exists() and not out.is_dir():
        raise DosingError(f"--out {out}: is a file, not a folder ({rule})")
    resolved = out.resolve()
    inside = [p for p in given if p.resolve().is_relative_to(resolved)]
    if inside:
        raise DosingError(f"--out {out}: holds the input {inside[0]} ({rule})")
    if out.is_dir():
        foreign = sorted(e.name for e in out.iterdir() if e.name not in OUTPUT_ENTRIES)
        if foreign:
            raise DosingError(
                f"--out {out}: holds {len(foreign)} file(s) or folder(s) that are not "
                f"recommendation outputs (e.g. {foreign[0]}) ({rule})"
            )
    base = next(p for p in (resolved.parent, *resolved.parent.parents) if p.exists())
    try:
        tempfile.TemporaryDirectory(dir=base).cleanup()
    except OSError as exc:
        raise DosingError(f"--out {out}: cannot write in {base} ({exc.strerror})") from None


def patient_summary(rec: pd.Series, regimens: pd.DataFrame, cfg: dict[str, Any]) -> str:
    """A short markdown summary of one patient's recommendation (with the gate status and the
    patient's warnings when ``rec`` has ``GATE`` and ``WARNINGS``)."""
    s = cfg["safety"]
    prob = cfg.get("decision", {}).get("prob", 0.9)
    lines = [
        f"# Patient {rec['ID']} ({rec['INDICATION']}, {rec['SETTING']})",
        "",
        f"*{DISCLAIMER}*",
        "",
    ]
    gate = rec.get("GATE")
    if isinstance(gate, str) and gate != "passed":
        lines += [
            "**Diagnostic gate not passed:** the config let the run go on (`gate.allow_failure`"
            " or `gate.allow_failure_for`); these numbers rest on a posterior that failed its "
            "checks:",
            *[f"- {part}" for part in gate.split(" | ")],
            "",
        ]
    if isinstance(rec.get("WARNINGS"), str):
        lines += ["**Warnings:**", *[f"- {w}" for w in rec["WARNINGS"].split(" | ")], ""]
    how = {
        "population": "population model and the patient's covariates (no concentrations)",
        "importance": f"patient's measured concentrations (importance resampling, ESS {rec['ESS']:.0f})",
        "nuts": f"patient's measured concentrations (per-patient NUTS; importance ESS {rec['ESS']:.0f})",
    }[rec["METHOD"]]
    lines.append(f"Individual PK from the {how}.")
    lines.append("")

    def interval(col: str, fmt: str) -> str:
        lo, hi = rec.get(f"{col}_LO"), rec.get(f"{col}_HI")
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
            return ""
        return f" ({100 * prob:.0f}% interval {lo:{fmt}}-{hi:{fmt}})"

    if is_true(rec["RECOMMENDED"]):
        lines += [
            f"**Recommended:** {rec['REGIMEN']} ({rec['TOTAL_MG']:.0f} mg in all).",
            "",
            f"- P(response) {rec['P_RESPONSE']:.2f}{interval('P_RESPONSE', '.2f')}",
            f"- peak ketamine median {rec['PEAK_KET_MEDIAN']:.0f} ng/mL"
            f"{interval('PEAK_KET', '.0f')}; P(> {s['peak_ketamine_ng_ml']:g} ng/mL) "
            f"{rec['P_PEAK_EXCEEDED']:.2f} (tolerated {s['peak_tolerated_probability']:g})",
            f"- cumulative ketamine AUC median {rec['CUM_AUC_KET_MEDIAN']:.0f} ng h/mL"
            f"{interval('CUM_AUC_KET', '.0f')}; P(> {s['cumulative_auc_ng_h_ml']:g} ng h/mL) "
            f"{rec['P_CUM_EXCEEDED']:.2f} (tolerated {s['cumulative_tolerated_probability']:g})",
            f"- why: {rec['REASON']}",
        ]
    else:
        lines.append(f"**No regimen recommended:** {rec['REASON']}.")
    if is_true(rec.get("LIKELY_NON_RESPONDER")):
        lines += ["", f"**Likely non-responder.** Main factor: {rec['DRIVER']}."]
    ok = (
        regimens[regimens["ACCEPTABLE"].map(is_true)]
        if "ACCEPTABLE" in regimens
        else regimens.iloc[0:0]
    )
    if len(ok):
        top = ok.sort_values("P_RESPONSE", ascending=False).head(5)
        lines += [
            "",
            "| alternatives within the limits | P(response) | 90% interval | P(peak) | P(cum.) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.REGIMEN} | {r.P_RESPONSE:.2f} | {r.P_RESPONSE_LO:.2f}-{r.P_RESPONSE_HI:.2f} "
            f"| {r.P_PEAK_EXCEEDED:.2f} | {r.P_CUM_EXCEEDED:.2f} |"
            for r in top.itertuples()
        ]

    def count(col: str) -> int:
        v = rec.get(col)
        return 0 if v is None or pd.isna(v) else int(v)

    lines += [
        "",
        f"{count('N_ACCEPTABLE')} of {count('N_CANDIDATES')} candidate regimens within the "
        "safety limits.",
    ]
    return "\n".join(lines) + "\n"


def _summary(rec: pd.DataFrame, texts: list[str], notes: list[str], caveats: Caveats) -> str:
    """``summary.md``: the cohort's counts, gate status, warnings and notes, then each patient."""
    flagged = int(rec["LIKELY_NON_RESPONDER"].map(is_true).sum())
    counts = rec["STATUS"].value_counts(sort=False)
    status = "; ".join(f"{n} {s}" for s, n in counts.items())
    head = [
        "# Dose recommendations",
        "",
        f"*{DISCLAIMER}*",
        "",
        f"{len(rec)} patient(s): {status}; {flagged} flagged as likely non-responders.",
        "",
    ]
    if caveats.gates:
        head += [
            "**Diagnostic gate not passed** by the model(s) below: the config let the run go on "
            "(`gate.allow_failure` or `gate.allow_failure_for`), so every number here rests on "
            "a posterior that failed its checks.",
            "",
            *[f"- {m}: {'; '.join(f)}" for m, f in caveats.gates.items()],
            "",
        ]
    if caveats.warnings:
        head += ["## Warnings", "", *[f"- {w}" for w in caveats.warnings], ""]
    if notes:
        head += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(head) + "\n" + "\n".join(texts)


def write_recommendation(
    result: Recommendation,
    out_dir: str | Path,
    cfg: dict[str, Any],
    caveats: Caveats | None = None,
    names: dict[str, str] | None = None,
    figures: bool | None = None,
) -> pd.DataFrame:
    """Write a recommendation into the directory ``out_dir`` (replaced as a whole, atomically).

    ``recommendations.csv`` (one row per patient, with the patient's ``WARNINGS``, the models'
    ``GATE`` status and the patient's ``SUMMARY_FILE`` and ``FIGURE_FILE``), ``regimens.csv``
    (every candidate), ``summary.md`` (all patients), ``notes.json`` (notes, warnings and gate
    failures, for :func:`merge_batches`), and per patient ``patients/<name>.md`` and, when
    ``figures`` (default: at most :data:`FIGURES_AUTO_MAX` patients), ``patients/<name>.png``
    (P(response) and P(limits) against dose); ``names`` (default :func:`patient_file_names` of
    these patients) maps each ID to its file name. Returns the recommendations as written.
    """
    from .io import atomic_dir, write_csv, write_figure, write_json, write_text
    from .plots import dose_recommendation

    caveats = caveats or Caveats()
    ids = result.recommendations["ID"].astype(str)
    names = names or patient_file_names(ids)
    if figures is None:
        figures = len(ids) <= FIGURES_AUTO_MAX
    by_id = dict(tuple(result.regimens.groupby("ID", sort=False)))
    rec = result.recommendations.assign(
        WARNINGS=[" | ".join(caveats.patient_warnings.get(i, [])) or np.nan for i in ids],
        GATE=caveats.gate_text(),
        SUMMARY_FILE=[f"patients/{names[i]}.md" for i in ids],
        FIGURE_FILE=[f"patients/{names[i]}.png" if figures and i in by_id else np.nan for i in ids],
    )
    with atomic_dir(out_dir) as out:
        (out / "patients").mkdir()
        write_csv(out / "recommendations.csv", rec, float_format="%.4g")
        write_csv(out / "regimens.csv", result.regimens, float_format="%.4g")
        texts = []
        for _, row in rec.iterrows():
            regs = by_id.get(row["ID"], result.regimens.iloc[0:0])
            texts.append(patient_summary(row, regs, cfg))
            write_text(out / row["SUMMARY_FILE"], texts[-1])
            if isinstance(row["FIGURE_FILE"], str):
                fig = dose_recommendation(regs, row, cfg["safety"])
                write_figure(out / row["FIGURE_FILE"], fig, dpi=100)
        notes = {"notes": result.notes, "warnings": caveats.warnings, "gates": caveats.gates}
        write_json(out / "notes.json", notes)
        write_text(out / "summary.md", _summary(rec, texts, result.notes, caveats))
    return rec


def patient_batch(patients: pd.DataFrame, batch: int, n_batches: int) -> pd.DataFrame:
    """Batch ``batch`` of ``n_batches`` contiguous batches of the patients (may be empty)."""
    if not 0 <= batch < n_batches:
        raise DosingError(f"batch {batch} is not one of 0..{n_batches - 1}")
    rows = np.array_split(np.arange(len(patients)), n_batches)[batch]
    return patients.iloc[rows].reset_index(drop=True)


def read_table(path: str | Path) -> pd.DataFrame:
    """A recommendations/regimens CSV as written (IDs as text, "." as missing)."""
    return pd.read_csv(path, dtype={"ID": str}, na_values=["."], keep_default_na=False)


def merge_batches(batch_dirs: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Gather batch outputs of :func:`write_recommendation` into one directory, as one
    :func:`write_recommendation` of all the patients would have written them: one
    ``summary.md`` whose counts, gate status, warnings and notes are the cohort's (each
    warning and note once), then every patient's summary in batch order."""

    from .io import atomic_dir, write_csv, write_json, write_text

    out = Path(out_dir)
    recs, regs, texts = [], [], []
    notes: dict[str, Any] = {"notes": [], "warnings": [], "gates": {}}
    for d in map(Path, batch_dirs):
        recs.append(read_table(d / "recommendations.csv"))
        regs.append(read_table(d / "regimens.csv"))
        texts += [(d / f).read_text(encoding="utf-8") for f in recs[-1]["SUMMARY_FILE"]]
        part = json.loads((d / "notes.json").read_text(encoding="utf-8"))
        notes["notes"] += part["notes"]
        notes["warnings"] += part["warnings"]
        notes["gates"].update(part["gates"])
    notes["notes"] = list(dict.fromkeys(notes["notes"]))
    notes["warnings"] = list(dict.fromkeys(notes["warnings"]))
    rec = pd.concat(recs, ignore_index=True)
    files = rec["SUMMARY_FILE"].str.casefold()
    if files.duplicated().any():
        raise DosingError(
            f"patients {sorted(rec.loc[files.duplicated(keep=False), 'ID'])} share a file name "
            "across batches (the batches must name files from the whole patients file)"
        )
    caveats = Caveats(notes["warnings"], {}, notes["gates"])
    write_csv(out / "recommendations.csv", rec, float_format="%.4g")
    write_csv(out / "regimens.csv", pd.concat(regs, ignore_index=True), float_format="%.4g")
    write_json(out / "notes.json", notes)
    write_text(out / "summary.md", _summary(rec, texts, notes["notes"], caveats))
    with atomic_dir(out / "patients") as tmp:
        for d in map(Path, batch_dirs):
            for f in sorted((d / "patients").glob("*")):
                shutil.copy2(f, tmp / f.name)
    return rec


def is_true(value: Any) -> bool:
    """A flag cell read from a table: True (Python or numpy bool, or "True"); NaN is False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() == "true"


# --------------------------------------------------------------------------------------
# The virtual trial of model-guided dosing
# --------------------------------------------------------------------------------------

SETTING_OF_ARM = {"CRPS_OUT": "outpatient", "CRPS_IN": "inpatient"}


def _true_outcome(
    params: dict[str, Any],
    arm: dict[str, Any],
    ind_pk: dict[str, float],
    doses: list[Any],
    rtol: float,
    atol: float,
) -> dict[str, float]:
    """The simulator's true exposures of one patient under a dose list (ODE reference)."""
    from .simulate import PK_ANALYTES, integrate_pk, visit_times

    _, t_primary = visit_times(arm, doses)
    ends = np.array([d.end for d in doses])
    times = np.unique(np.concatenate([ends, [t_primary]]))
    sol = integrate_pk(ind_pk, doses, times, params["molar_mass_g_mol"], rtol, atol)
    at = {float(t): j for j, t in enumerate(sol.times)}
    ket = [PK_ANALYTES.index("S_KET"), PK_ANALYTES.index("R_KET")]
    hnk = [PK_ANALYTES.index(a) for a in params["response"]["exposure_analytes"]]
    end_rows = [at[float(t)] for t in ends]
    j = at[float(t_primary)]
    return {
        "AUC_HNK": float(sol.auc[j, hnk].sum()),
        "PEAK_KET": float(sol.conc[end_rows][:, ket].sum(axis=1).max()),
        "CUM_AUC_KET": float(sol.auc[j, ket].sum()),
        "TOTAL_MG": float(sum(d.amt for d in doses)),
    }


def virtual_trial(
    config: dict[str, Any], models: Models, seed: int, population: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, Recommendation]:
    """New simulated patients dosed by the model and by their arm's standard protocol, scored
    on the simulator's TRUE response probability and TRUE safety-limit exceedance.

    ``population`` is the simulator's ``truth_population.json`` of the run (its parameters,
    with the run's truth overrides applied, and reference exposures), so the new patients
    come from the same truth as the trial the models were fitted to. Returns per-patient
    rows, a summary by arm and strategy, and the recommendation.
    """
    from .simulate import (
        Dose,
        build_regimen,
        draw_pk_parameters,
        draw_subjects,
        response_linear_predictor,
    )

    cfg = config["dosing"]
    sim = config["simulation"]
    params = population["parameters"]
    rtol, atol = sim["ode"]["rtol"], sim["ode"]["atol"]
    rng_cov, rng_pk, rng_design = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    subjects = draw_subjects(params, cfg["trial"]["patients"], sim["population_mix"], rng_cov)
    ind_pk = draw_pk_parameters(params, subjects, rng_pk)
    auc_ref = population["reference_auc_hnk_ng_h_ml"]
    patients = pd.DataFrame(
        {
            "ID": subjects["ID"].astype(str),
            "INDICATION": subjects["INDICATION"].astype(str),
            "WT": subjects["WT"].astype(float),
            "AGE": subjects["AGE"].astype(float),
            "SEX": subjects["SEX"],
            "CYP2B6": subjects["CYP2B6_CLASS"],
            "CYP2B6_CLASS": subjects["CYP2B6_CLASS"],
            "DSER": subjects["DSER"].astype(float),
            "MG": subjects["MG"].astype(float),
            "SETTING": subjects["ARM"].map(SETTING_OF_ARM).fillna("outpatient"),
        }
    )
    rec = recommend(models, patients, cfg, seed)
    limits = cfg["safety"]
    rows = []
    for i, subj in subjects.iterrows():
        arm = params["arms"][subj["ARM"]]
        pk_i = ind_pk.iloc[i].to_dict()
        reg = arm["regimen"]
        n_days = int(rng_design.choice(reg["days"])) if "days" in reg else None
        standard = build_regimen(reg, float(subj["WT"]), n_days)
        r = rec.recommendations.iloc[i]
        strategies = {"standard": standard}
        if is_true(r["RECOMMENDED"]):
            target = r["FORMULATION"]
            strategies["guided"] = [
                Dose(t, a, rate, target)
                for t, a, rate in Regimen(
                    family="",
                    indication=r["INDICATION"],
                    setting=r["SETTING"],
                    formulation=target,
                    duration_h=float(r["DURATION_H"]),
                    sessions=int(r["SESSIONS"]),
                    interval_h=float(r["INTERVAL_H"]),
                    dose_mg_kg=None if pd.isna(r["DOSE_MG_KG"]) else float(r["DOSE_MG_KG"]),
                    rate_mg_h=None if pd.isna(r["RATE_MG_H"]) else float(r["RATE_MG_H"]),
                ).doses(float(subj["WT"]))
            ]
        for name, doses in strategies.items():
            tr = _true_outcome(params, arm, pk_i, doses, rtol, atol)
            eta = response_linear_predictor(
                params,
                np.array([subj["INDICATION"]]),
                np.array([tr["AUC_HNK"]]),
                auc_ref,
                np.array([float(subj["DSER"])]),
                np.array([float(subj["MG"])]),
            )[0]
            rows.append(
                {
                    "ID": str(subj["ID"]),
                    "ARM": subj["ARM"],
                    "INDICATION": subj["INDICATION"],
                    "CYP2B6_CLASS": subj["CYP2B6_CLASS"],
                    "STRATEGY": name,
                    "REGIMEN": r["REGIMEN"] if name == "guided" else "standard protocol",
                    **tr,
                    "TRUE_P_RESPONSE": float(expit(eta)),
                    "TRUE_PEAK_EXCEEDED": tr["PEAK_KET"] > limits["peak_ketamine_ng_ml"],
                    "TRUE_CUM_EXCEEDED": tr["CUM_AUC_KET"] > limits["cumulative_auc_ng_h_ml"],
                    "PREDICTED_P_RESPONSE": r["P_RESPONSE"] if name == "guided" else np.nan,
                    "FLAGGED": is_true(r["LIKELY_NON_RESPONDER"]),
                }
            )
        if not is_true(r["RECOMMENDED"]):  # not treated under model guidance
            rows.append(
                {
                    "ID": str(subj["ID"]),
                    "ARM": subj["ARM"],
                    "INDICATION": subj["INDICATION"],
                    "CYP2B6_CLASS": subj["CYP2B6_CLASS"],
                    "STRATEGY": "guided",
                    "REGIMEN": f"not treated ({r['STATUS']})",
                    "AUC_HNK": 0.0,
                    "PEAK_KET": 0.0,
                    "CUM_AUC_KET": 0.0,
                    "TOTAL_MG": 0.0,
                    "TRUE_P_RESPONSE": 0.0,
                    "TRUE_PEAK_EXCEEDED": False,
                    "TRUE_CUM_EXCEEDED": False,
                    "PREDICTED_P_RESPONSE": np.nan,
                    "FLAGGED": is_true(r["LIKELY_NON_RESPONDER"]),
                }
            )
    per_patient = pd.DataFrame(rows)
    return per_patient, trial_summary(per_patient), rec


def trial_summary(per_patient: pd.DataFrame) -> pd.DataFrame:
    """True response rate and exceedance by arm (and overall) and strategy; flagged patients."""
    out = []
    groups = [("all", per_patient), *per_patient.groupby("ARM", sort=True)]
    for arm, g in groups:
        for strat, s in g.groupby("STRATEGY", sort=False):
            flagged = s[s["FLAGGED"]]
            out.append(
                {
                    "ARM": arm,
                    "STRATEGY": strat,
                    "PATIENTS": len(s),
                    "TRUE_RESPONSE_RATE": s["TRUE_P_RESPONSE"].mean(),
                    "TRUE_PEAK_EXCEEDED": s["TRUE_PEAK_EXCEEDED"].mean(),
                    "TRUE_CUM_EXCEEDED": s["TRUE_CUM_EXCEEDED"].mean(),
                    "TRUE_ANY_EXCEEDED": (s["TRUE_PEAK_EXCEEDED"] | s["TRUE_CUM_EXCEEDED"]).mean(),
                    "MEAN_TOTAL_MG": s["TOTAL_MG"].mean(),
                    "FLAGGED_SHARE": len(flagged) / len(s) if len(s) else np.nan,
                    "FLAGGED_TRUE_RESPONSE_RATE": flagged["TRUE_P_RESPONSE"].mean()
                    if len(flagged)
                    else np.nan,
                    "UNFLAGGED_TRUE_RESPONSE_RATE": s.loc[~s["FLAGGED"], "TRUE_P_RESPONSE"].mean(),
                }
            )
    return pd.DataFrame(out)


__all__ = [
    "DISCLAIMER",
    "DosingError",
    "IndividualPosterior",
    "Models",
    "Recommendation",
    "Regimen",
    "decide",
    "evaluate_regimens",
    "individual_posterior",
    "load_concentrations",
    "load_models",
    "load_patients",
    "nuts_patient",
    "patient_summary",
    "pk_loglik",
    "recommend",
    "regimen_grid",
    "trial_summary",
    "virtual_trial",
]
