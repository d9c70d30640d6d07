r"""The virtual ketamine trial: the built-in default dataset of the workflow.

A multi-arm trial is drawn from one parameter file of literature-based values
(``data/truth/ketamine_virtual_trial.yaml``; every number there carries its source). The
simulator writes the dataset in the project's data contract and, next to it, the true
population and per-subject values, so that later stages can be checked for recovery.

Pharmacokinetics (per enantiomer e in {S, R}; amounts A in mg, volumes in L, CL in L/h)::

    dA_c/dt   = In_e(t) - (CL + Q)/V_c * A_c + Q/V_p * A_p
    dA_p/dt   = Q/V_c * A_c - Q/V_p * A_p
    dA_nk/dt  = CL_f/V_c * A_c * (M_NK/M_KET) - CL_NK/V_NK * A_nk
    dA_hnk/dt = f_HNK * CL_NK/V_NK * A_nk * (M_HNK/M_NK) - CL_HNK/V_HNK * A_hnk

with CL = CL_f + CL_o, the N-demethylation clearance CL_f = fm_NK * CL_typ * m_CYP2B6 and the
other routes CL_o = (1 - fm_NK) * CL_typ, both scaled by (WT/70)^0.75 and one log-normal
subject effect; volumes scale with WT/70 and carry their own effects. In_e(t) is the sum of
active zero-order infusions times the enantiomer fraction of the dosed product (1/2 each for
the racemate). Concentrations are A/V * 1000 ng/mL. The system is integrated numerically
(scipy ``solve_ivp``, LSODA, piecewise between dose events), independent of the exact
solution that the fitted models use, so that one can be checked against the other.

Observations: ``DV = C * exp(eps_prop) + eps_add``; below the LLOQ reported as BLQ, never dropped.

Response (the ground-truth mechanism; indication ``ind`` = MDD or CRPS)::

    eta_i  = a[ind] + b_hnk * log(AUC_HNK_i / AUC_ref[ind])
             + b_dser[ind] * (DSER_i - DSER_ref) + b_mg[ind] * (MG_i - MG_ref) / 0.1
    R_i    = logistic(eta_i + e_i),   e_i ~ standard logistic
    P(responder_i) = P(R_i >= 1/2) = logistic(eta_i)

``AUC_HNK`` is the AUC of (2S,6S)- plus (2R,6R)-HNK from the first dose to the primary endpoint
and ``AUC_ref`` that of a typical patient (70 kg, normal metaboliser, no random effects) on the
indication's reference arm. ``R_i`` is the fractional fall of the score at the primary endpoint;
the time course ``g(t) = (1 - exp(-ln2 t / t_on)) * exp(-ln2 max(0, t - t_end) / t_off)`` (t_end:
end of the infusion course) gives the fall at other visits, ``R_i g(t) / g(t_primary)`` capped at
``r_max``, so relief builds within hours (MDD) or days (CRPS) and fades over about a week (MDD) or
weeks (CRPS). Scores are ``baseline * (1 - fall) + noise``, clipped to the scale and rounded.
Probability and size of response both rise with HNK exposure, fall with higher D-serine and
fall with lower Mg; CYP2B6 acts only through exposure. More in ``docs/simulator.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.integrate import solve_ivp
from scipy.special import expit

from ketamine_pmx.contract import (
    CYP2B6_CLASSES,
    DOSE_TARGETS,
    ENDPOINT_OF_INDICATION,
    EVID_DOSE,
    EVID_OBSERVATION,
)
from ketamine_pmx.io import write_csv, write_json
from ketamine_pmx.meta import __version__

ENANTIOMERS = ("S", "R")
PK_ANALYTES = ("S_KET", "R_KET", "S_NK", "R_NK", "S_HNK", "R_HNK")
#: State layout per enantiomer: central, peripheral, NK, HNK (amounts, mg).
_N_STATE_PER_ENANTIOMER = 4
_N_AMOUNT_STATES = 2 * _N_STATE_PER_ENANTIOMER
PK_PARAMETER_NAMES = ("cl", "clf", "vc", "q", "vp", "cl_nk", "v_nk", "fm_hnk", "cl_hnk", "v_hnk")
GENOTYPE_OF_CLASS = {"NM": "*1/*1", "IM": "*1/*6", "PM": "*6/*6"}
HOURS_PER_WEEK = 168.0


class ParameterFileError(ValueError):
    """The trial parameter file is missing a value or holds an impossible one."""


# --------------------------------------------------------------------------------------
# Parameter file
# --------------------------------------------------------------------------------------


def load_parameters(path: str | Path) -> dict[str, Any]:
    """Read and check the trial parameter file (YAML, safely loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ParameterFileError(f"{path}: trial parameter file not found")
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    problems = _check_parameters(params)
    if problems:
        raise ParameterFileError(
            f"{path}: invalid trial parameters:\n  - " + "\n  - ".join(problems)
        )
    return params


def _check_parameters(p: Any) -> list[str]:
    if not isinstance(p, dict):
        return ["the file must hold a mapping"]
    problems: list[str] = []
    for key in ("molar_mass_g_mol", "pk", "covariates", "response", "arms"):
        if key not in p:
            problems.append(f"missing section {key!r}")
    if problems:
        return problems
    for e in ENANTIOMERS:
        ep = p["pk"].get("enantiomers", {}).get(e)
        if ep is None:
            problems.append(f"pk.enantiomers.{e}: missing")
            continue
        for name in ("cl", "vc", "q", "vp", "cl_nk", "v_nk", "cl_hnk", "v_hnk"):
            if not (isinstance(ep.get(name), int | float) and ep[name] > 0):
                problems.append(f"pk.enantiomers.{e}.{name}: must be a positive number")
        for name in ("fm_nk", "fm_hnk"):
            if not (isinstance(ep.get(name), int | float) and 0 < ep[name] <= 1):
                problems.append(f"pk.enantiomers.{e}.{name}: must be a fraction in (0, 1]")
    mult = p["pk"].get("cyp2b6_clf_multiplier", {})
    for c in CYP2B6_CLASSES:
        if not (isinstance(mult.get(c), int | float) and mult[c] > 0):
            problems.append(f"pk.cyp2b6_clf_multiplier.{c}: must be a positive number")
    for name, value in p["pk"].get("omega", {}).items():
        if not (isinstance(value, int | float) and value >= 0):
            problems.append(f"pk.omega.{name}: must be >= 0")
    rho = p["pk"].get("enantiomer_eta_correlation")
    if not (isinstance(rho, int | float) and -1 <= rho <= 1):
        problems.append("pk.enantiomer_eta_correlation: must be in [-1, 1]")
    for a in PK_ANALYTES:
        if a not in p["pk"].get("lloq_ng_ml", {}):
            problems.append(f"pk.lloq_ng_ml.{a}: missing")
        if a not in p["pk"].get("residual", {}).get("sigma_prop", {}):
            problems.append(f"pk.residual.sigma_prop.{a}: missing")
    for arm, spec in p["arms"].items():
        if spec.get("indication") not in ENDPOINT_OF_INDICATION:
            problems.append(f"arms.{arm}.indication: must be one of {list(ENDPOINT_OF_INDICATION)}")
        reg = spec.get("regimen", {})
        if reg.get("type") not in ("per_kg_single", "daily_titrated", "continuous_titrated"):
            problems.append(f"arms.{arm}.regimen.type: unknown regimen type {reg.get('type')!r}")
        levels = reg.get("dose_levels_mg_kg")
        if levels is not None and (
            reg.get("type") != "per_kg_single"
            or not isinstance(levels, list)
            or not levels
            or not all(isinstance(v, int | float) and v > 0 for v in levels)
        ):
            problems.append(
                f"arms.{arm}.regimen.dose_levels_mg_kg: a non-empty list of positive doses, "
                "only for a per_kg_single regimen"
            )
        ketamine = [t for t, frac in DOSE_TARGETS.items() if "S" in frac]
        if reg.get("formulation") not in ketamine:
            problems.append(f"arms.{arm}.regimen.formulation: must be one of {ketamine}")
    for ind, arm in p["response"].get("reference_arm", {}).items():
        if arm not in p["arms"]:
            problems.append(f"response.reference_arm.{ind}: unknown arm {arm!r}")
    return problems


def apply_truth_overrides(params: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with the config's truth switches (``simulation.truth``) applied.

    Response switches (None keeps a value): ``hnk_effect``, ``dser_effect``, ``mg_effect``.
    ``parameters`` replaces values of the parameter file by dotted path, a ``*`` standing for
    every key at its level (``{"pk.enantiomers.*.v_nk": 200}``: NK's volume of both
    enantiomers; ``{"arms.MDD.regimen.dose_levels_mg_kg": [0.5]}``: one dose level); a number
    replaces a number and a list a list. ``no_bsv`` lists BSV groups of ``pk.omega`` simulated
    without between-subject variability (omega 0), e.g. ``["q", "vp"]``. The result is checked
    again as a parameter file; a problem raises :class:`ParameterFileError` naming the key.
    """
    out = json.loads(json.dumps(params))
    resp = out["response"]
    if truth.get("hnk_effect") is not None:
        resp["b_log_auc_hnk"] = float(truth["hnk_effect"])
    for key, target in (("dser_effect", "b_dser_per_um"), ("mg_effect", "b_mg_per_0p1_mmol_l")):
        if truth.get(key) is not None:
            resp[target] = {ind: float(truth[key]) for ind in resp[target]}
    for path, value in (truth.get("parameters") or {}).items():
        _replace(out, path.split("."), value, f"simulation.truth.parameters.{path}")
    omega = out["pk"].get("omega", {})
    for group in truth.get("no_bsv") or []:
        if group not in omega:
            raise ParameterFileError(
                f"simulation.truth.no_bsv: {group!r} is not a BSV group of the parameter file "
                f"(pk.omega: {', '.join(omega)})"
            )
        omega[group] = 0.0
    if truth.get("parameters") or truth.get("no_bsv"):
        problems = _check_parameters(out)
        if problems:
            raise ParameterFileError(
                "simulation.truth: the overridden parameters are invalid:\n  - "
                + "\n  - ".join(problems)
            )
    return out


def _replace(node: Any, keys: list[str], value: Any, where: str) -> None:
    """Set ``node[k1][k2]...`` to ``value`` (``*`` matches every key), refusing a path that
    names no value of the file or a value of another type (a number for a list, ...)."""
    key, rest = keys[0], keys[1:]
    if not isinstance(node, dict) or (key != "*" and key not in node):
        known = f"keys: {', '.join(map(str, node))}" if isinstance(node, dict) else "a value"
        raise ParameterFileError(f"{where}: the parameter file has no key {key!r} there ({known})")
    for k in list(node) if key == "*" else [key]:
        if rest:
            _replace(node[k], rest, value, where)
            continue
        old = node[k]
        if not (
            (_is_number(old) and _is_number(value))
            or (isinstance(old, list) and isinstance(value, list))
        ):
            raise ParameterFileError(
                f"{where}: replaces {old!r} with {value!r}; a number takes a number, a list a list"
            )
        node[k] = json.loads(json.dumps(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# Subjects and covariates
# --------------------------------------------------------------------------------------


def _truncated(draw, lo: float, hi: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``size`` values from ``draw(rng, n)`` restricted to [lo, hi] by rejection."""
    out = draw(rng, size)
    bad = (out < lo) | (out > hi)
    for _ in range(1000):
        if not bad.any():
            return out
        out[bad] = draw(rng, int(bad.sum()))
        bad = (out < lo) | (out > hi)
    raise ParameterFileError(f"could not draw values inside [{lo}, {hi}]: check the distribution")


def draw_subjects(
    params: dict[str, Any],
    arm_sizes: dict[str, int],
    population_mix: dict[str, float],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Draw patients' arms and baseline covariates (one row per subject)."""
    unknown = sorted(set(arm_sizes) - set(params["arms"]))
    if unknown:
        raise ParameterFileError(
            f"simulation.arms names arm(s) {unknown} not defined in the parameter file "
            f"(defined: {sorted(params['arms'])})"
        )
    cov = params["covariates"]
    arms = [arm for arm, n in arm_sizes.items() for _ in range(n)]
    n = len(arms)
    if n == 0:
        raise ParameterFileError("simulation.arms: the trial has no patients")
    ind = np.array([params["arms"][a]["indication"] for a in arms])
    study = np.array([params["arms"][a]["study"] for a in arms])

    female_share = np.array([cov["female_share"][i] for i in ind])
    sex = np.where(rng.random(n) < female_share, "F", "M")

    wt_spec = cov["weight_kg"]
    median = np.array([wt_spec["median"][s] for s in sex])
    z = _truncated(
        lambda g, k: g.standard_normal(k),
        (np.log(wt_spec["min"]) - np.log(median.max())) / wt_spec["sd_log"],
        (np.log(wt_spec["max"]) - np.log(median.min())) / wt_spec["sd_log"],
        n,
        rng,
    )
    wt = np.clip(median * np.exp(wt_spec["sd_log"] * z), wt_spec["min"], wt_spec["max"])

    age_spec = cov["age_years"]
    age_mean = np.array([age_spec["mean"][i] for i in ind])
    age = np.clip(
        age_mean + age_spec["sd"] * _truncated(lambda g, k: g.standard_normal(k), -3, 3, n, rng),
        age_spec["min"],
        age_spec["max"],
    )

    mix_names = sorted(population_mix)
    freqs = cov["cyp2b6_star6_allele_frequency"]
    missing = [m for m in mix_names if m not in freqs]
    if missing:
        raise ParameterFileError(
            f"simulation.population_mix names ancestry {missing} without a CYP2B6*6 allele "
            f"frequency in the parameter file (known: {sorted(freqs)})"
        )
    shares = np.array([population_mix[m] for m in mix_names], dtype=float)
    ancestry = rng.choice(mix_names, size=n, p=shares / shares.sum())
    q = np.array([freqs[a] for a in ancestry])
    n_star6 = rng.binomial(2, q)
    cyp_class = np.array(CYP2B6_CLASSES)[n_star6]

    ds = cov["dser_um"]
    dser = _truncated(
        lambda g, k: ds["median"] * np.exp(ds["sd_log"] * g.standard_normal(k)),
        ds["min"],
        ds["max"],
        n,
        rng,
    )
    ms = cov["mg_mmol_l"]
    mg = _truncated(
        lambda g, k: ms["mean"] + ms["sd"] * g.standard_normal(k), ms["min"], ms["max"], n, rng
    )
    return pd.DataFrame(
        {
            "ID": np.arange(1, n + 1),
            "ARM": arms,
            "INDICATION": ind,
            "STUDY": study,
            "SEX": sex,
            "WT": np.round(wt, 1),
            "AGE": np.round(age).astype(int),
            "ANCESTRY": ancestry,
            "CYP2B6": [GENOTYPE_OF_CLASS[c] for c in cyp_class],
            "CYP2B6_CLASS": cyp_class,
            "DSER": np.round(dser, 2),
            "MG": np.round(mg, 2),
        }
    )


def draw_pk_parameters(
    params: dict[str, Any], subjects: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """Individual PK parameters per subject and enantiomer (columns ``S_cl``, ``R_vc``, ...)."""
    pk = params["pk"]
    n = len(subjects)
    wt_ratio = subjects["WT"].to_numpy(float) / pk["reference_weight_kg"]
    scale_cl = wt_ratio ** pk["allometry"]["clearance"]
    scale_v = wt_ratio ** pk["allometry"]["volume"]
    mult = np.array([pk["cyp2b6_clf_multiplier"][c] for c in subjects["CYP2B6_CLASS"]])
    rho = pk["enantiomer_eta_correlation"]
    omega = pk["omega"]
    out: dict[str, np.ndarray] = {}
    etas: dict[str, np.ndarray] = {}
    for name in ("cl", "vc", "q", "vp", "cl_nk", "cl_hnk"):
        z_s = rng.standard_normal(n)
        z_r = rho * z_s + np.sqrt(1.0 - rho**2) * rng.standard_normal(n)
        etas[f"S_{name}"] = omega.get(name, 0.0) * z_s
        etas[f"R_{name}"] = omega.get(name, 0.0) * z_r
    for e in ENANTIOMERS:
        ep = pk["enantiomers"][e]
        eta = lambda name, e=e: np.exp(etas[f"{e}_{name}"])  # noqa: E731
        clf = ep["fm_nk"] * ep["cl"] * mult * scale_cl * eta("cl")
        clo = (1.0 - ep["fm_nk"]) * ep["cl"] * scale_cl * eta("cl")
        out[f"{e}_cl"] = clf + clo
        out[f"{e}_clf"] = clf
        out[f"{e}_vc"] = ep["vc"] * scale_v * eta("vc")
        out[f"{e}_q"] = ep["q"] * scale_cl * eta("q")
        out[f"{e}_vp"] = ep["vp"] * scale_v * eta("vp")
        out[f"{e}_cl_nk"] = ep["cl_nk"] * scale_cl * eta("cl_nk")
        out[f"{e}_v_nk"] = ep["v_nk"] * scale_v
        out[f"{e}_fm_hnk"] = np.full(n, float(ep["fm_hnk"]))
        out[f"{e}_cl_hnk"] = ep["cl_hnk"] * scale_cl * eta("cl_hnk")
        out[f"{e}_v_hnk"] = ep["v_hnk"] * scale_v
    frame = pd.DataFrame(out)
    for key, value in etas.items():
        frame[f"eta_{key}"] = value
    frame.insert(0, "ID", subjects["ID"].to_numpy())
    return frame


# --------------------------------------------------------------------------------------
# Regimens and sampling designs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dose:
    """One administration: start time (h), amount (mg), rate (mg/h; 0 = bolus), product."""

    time: float
    amt: float
    rate: float
    target: str = "KET"

    @property
    def end(self) -> float:
        return self.time + (self.amt / self.rate if self.rate > 0 else 0.0)


def build_regimen(
    regimen: dict[str, Any], weight_kg: float, n_days: int | None = None
) -> list[Dose]:
    """The dose events of one patient under an arm's regimen."""
    kind = regimen["type"]
    target = regimen["formulation"]
    if kind == "per_kg_single":
        amt = regimen["dose_mg_kg"] * weight_kg
        return [Dose(0.0, amt, amt / regimen["duration_h"], target)]
    days = n_days if n_days is not None else regimen["days"][0]
    doses = []
    for d in range(days):
        rate = min(regimen["max_rate_mg_h"], regimen["start_rate_mg_h"] + regimen["step_mg_h"] * d)
        if kind == "daily_titrated":
            doses.append(
                Dose(d * regimen["interval_h"], rate * regimen["hours_per_day"], rate, target)
            )
        elif kind == "continuous_titrated":
            doses.append(Dose(d * 24.0, rate * 24.0, rate, target))
        else:  # guarded by _check_parameters
            raise ParameterFileError(f"unknown regimen type {kind!r}")
    return doses


def allocate_dose_levels(
    params: dict[str, Any], subjects: pd.DataFrame, rng: np.random.Generator
) -> np.ndarray:
    """Randomised dose level (mg/kg) of each subject of a dose-ranging arm; NaN elsewhere.

    An arm whose ``per_kg_single`` regimen lists ``dose_levels_mg_kg`` allocates its subjects to
    the levels in equal shares (the list repeated to the arm's size, then permuted), as a
    dose-ranging trial does. The arm's ``dose_mg_kg`` stays its standard dose: the reference
    exposure of the response truth and the standard protocol of the dosing trial use it.
    """
    level = np.full(len(subjects), np.nan)
    arm_of = subjects["ARM"].to_numpy()
    for name, arm in params["arms"].items():
        levels = arm["regimen"].get("dose_levels_mg_kg")
        rows = np.flatnonzero(arm_of == name)
        if levels is None or rows.size == 0:
            continue
        level[rows] = rng.permutation(np.resize(np.asarray(levels, float), rows.size))
    return level


def _jitter(nominal_after: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    return nominal_after * np.exp(sd * rng.standard_normal(len(nominal_after)))


def sampling_times(arm: dict[str, Any], doses: list[Dose], rng: np.random.Generator) -> np.ndarray:
    """Actual PK sampling times (h) of one patient: the arm's design with multiplicative jitter."""
    sd = arm.get("time_jitter_sd", 0.0)
    if "pk_sampling_h" in arm:
        return np.sort(_jitter(np.asarray(arm["pk_sampling_h"], float), sd, rng))
    course_end = max(d.end for d in doses)
    times = []
    for spec in arm["pk_sampling"]:
        if "after_end_h" in spec:
            times.append(course_end + float(_jitter(np.array([spec["after_end_h"]]), sd, rng)[0]))
            continue
        day = len(doses) if spec["day"] == "last" else int(spec["day"])
        if day > len(doses):
            continue
        dose = doses[day - 1]
        # Not clamped to the infusion's end: a sample planned after it (e.g. 6 h after the
        # start of a 4-h infusion) is taken then, not merged with the end-of-infusion sample.
        times.append(dose.time + float(_jitter(np.array([spec["after_start_h"]]), sd, rng)[0]))
    return np.sort(np.unique(np.round(times, 4)))


def course_end(doses: list[Dose]) -> float:
    return max(d.end for d in doses)


def visit_times(arm: dict[str, Any], doses: list[Dose]) -> tuple[np.ndarray, float]:
    """Endpoint visit times (h) and the primary endpoint time of one patient."""
    if "visits_h" in arm:
        return np.asarray(arm["visits_h"], float), float(arm["primary_endpoint_h"])
    end = course_end(doses)
    v = arm["visits"]
    times = [0.0] if v.get("baseline", True) else []
    if v.get("end_of_course", False):
        times.append(end)
    times += [end + w * HOURS_PER_WEEK for w in v.get("weeks_after_course", [])]
    primary = end + arm["primary_endpoint_weeks_after_course"] * HOURS_PER_WEEK
    return np.asarray(times, float), primary


# --------------------------------------------------------------------------------------
# The ODE system and its piecewise numerical integration
# --------------------------------------------------------------------------------------


def system_matrix(ind_pk: dict[str, float], molar_mass: dict[str, float]) -> np.ndarray:
    """Matrix ``A`` of the linear system dA/dt = A x + b(t) (amount states, mg)."""
    mat = np.zeros((_N_AMOUNT_STATES, _N_AMOUNT_STATES))
    r_nk = molar_mass["NK"] / molar_mass["KET"]
    r_hnk = molar_mass["HNK"] / molar_mass["NK"]
    for k, e in enumerate(ENANTIOMERS):
        c, p, m, h = (k * _N_STATE_PER_ENANTIOMER + i for i in range(4))
        cl, clf, vc = ind_pk[f"{e}_cl"], ind_pk[f"{e}_clf"], ind_pk[f"{e}_vc"]
        q, vp = ind_pk[f"{e}_q"], ind_pk[f"{e}_vp"]
        k_nk = ind_pk[f"{e}_cl_nk"] / ind_pk[f"{e}_v_nk"]
        k_hnk = ind_pk[f"{e}_cl_hnk"] / ind_pk[f"{e}_v_hnk"]
        mat[c, c] = -(cl + q) / vc
        mat[c, p] = q / vp
        mat[p, c] = q / vc
        mat[p, p] = -q / vp
        mat[m, c] = clf / vc * r_nk
        mat[m, m] = -k_nk
        mat[h, m] = ind_pk[f"{e}_fm_hnk"] * k_nk * r_hnk
        mat[h, h] = -k_hnk
    return mat


def concentration_matrix(ind_pk: dict[str, float]) -> np.ndarray:
    """Rows map amount states to the concentrations (ng/mL) of ``PK_ANALYTES``."""
    out = np.zeros((len(PK_ANALYTES), _N_AMOUNT_STATES))
    for k, e in enumerate(ENANTIOMERS):
        base = k * _N_STATE_PER_ENANTIOMER
        out[PK_ANALYTES.index(f"{e}_KET"), base] = 1000.0 / ind_pk[f"{e}_vc"]
        out[PK_ANALYTES.index(f"{e}_NK"), base + 2] = 1000.0 / ind_pk[f"{e}_v_nk"]
        out[PK_ANALYTES.index(f"{e}_HNK"), base + 3] = 1000.0 / ind_pk[f"{e}_v_hnk"]
    return out


@dataclass
class PKSolution:
    """Concentrations (ng/mL) and cumulative AUCs (ng*h/mL) of ``PK_ANALYTES`` at ``times``."""

    times: np.ndarray
    conc: np.ndarray  # (n_times, n_analytes)
    auc: np.ndarray  # (n_times, n_analytes), AUC from time 0
    extra: dict[str, Any] = field(default_factory=dict)


def integrate_pk(
    ind_pk: dict[str, float],
    doses: list[Dose],
    times: np.ndarray,
    molar_mass: dict[str, float],
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> PKSolution:
    """Integrate the ketamine -> NK -> HNK system numerically and report it at ``times``.

    The integration is split at every dose start and infusion end, so that the right-hand side
    is smooth within each piece; boluses are added to the central state at their time.
    Cumulative AUCs are carried as extra states (dAUC/dt = C).
    """
    times = np.asarray(times, float)
    if np.any(times < 0):
        raise ValueError("sampling times must be >= 0")
    amat = system_matrix(ind_pk, molar_mass)
    cmat = concentration_matrix(ind_pk)
    n_amt, n_an = _N_AMOUNT_STATES, len(PK_ANALYTES)
    full = np.zeros((n_amt + n_an, n_amt + n_an))
    full[:n_amt, :n_amt] = amat
    full[n_amt:, :n_amt] = cmat

    breaks = sorted({0.0, *(d.time for d in doses), *(d.end for d in doses)})
    t_final = max(float(times.max(initial=0.0)), breaks[-1])
    if breaks[-1] < t_final:
        breaks.append(t_final)
    state = np.zeros(n_amt + n_an)
    out = np.full((len(times), n_amt + n_an), np.nan)
    for lo, hi in itertools.pairwise(breaks):
        inflow = np.zeros(n_amt + n_an)
        for d in doses:
            for k, e in enumerate(ENANTIOMERS):
                frac = DOSE_TARGETS[d.target][e]
                if d.rate == 0 and d.time == lo:
                    state[k * _N_STATE_PER_ENANTIOMER] += d.amt * frac
                elif d.rate > 0 and d.time <= lo < d.end:
                    inflow[k * _N_STATE_PER_ENANTIOMER] += d.rate * frac
        # Values at a piece's start are the state after its boluses; later pieces overwrite
        # earlier ones at shared boundaries, so an observation at a bolus time is post-dose.
        out[times == lo] = state
        inside = (times > lo) & (times <= hi)
        t_eval = np.union1d(times[inside], [hi])
        sol = solve_ivp(
            lambda _t, y, inflow=inflow: full @ y + inflow,
            (lo, hi),
            state,
            method="LSODA",
            t_eval=t_eval,
            rtol=rtol,
            atol=atol,
            jac=lambda _t, _y: full,
        )
        if not sol.success:
            raise RuntimeError(f"ODE integration failed on [{lo}, {hi}] h: {sol.message}")
        out[inside] = sol.y[:, np.searchsorted(sol.t, times[inside])].T
        state = sol.y[:, -1].copy()
    return PKSolution(times=times, conc=out[:, :n_amt] @ cmat.T, auc=out[:, n_amt:])


# --------------------------------------------------------------------------------------
# Observations and responses
# --------------------------------------------------------------------------------------


def observe_concentrations(
    conc: np.ndarray, params: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add residual error; return DV (ng/mL), BLQ flags and LLOQ per value.

    ``conc`` has shape (n_times, n_analytes) in ``PK_ANALYTES`` order.
    """
    pk = params["pk"]
    sigma = np.array([pk["residual"]["sigma_prop"][a] for a in PK_ANALYTES])
    lloq = np.broadcast_to(np.array([pk["lloq_ng_ml"][a] for a in PK_ANALYTES]), conc.shape)
    dv = conc * np.exp(sigma * rng.standard_normal(conc.shape))
    dv = dv + pk["residual"]["sigma_add_ng_ml"] * rng.standard_normal(conc.shape)
    dv = _round_sig(dv, 4)
    blq = dv < lloq
    dv = np.where(blq, lloq, dv)
    return dv, blq, lloq.copy()


def _round_sig(x: np.ndarray, digits: int) -> np.ndarray:
    """Round to ``digits`` significant digits (assays report that way)."""
    x = np.asarray(x, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(x != 0, np.floor(np.log10(np.abs(x))), 0.0)
    factor = 10.0 ** (digits - 1 - mag)
    return np.round(x * factor) / factor


def time_course(t: np.ndarray, t_end: float, tc: dict[str, float]) -> np.ndarray:
    """Relative size g(t) of the relief at time t (see module docstring)."""
    t = np.asarray(t, float)
    onset = 1.0 - np.exp(-np.log(2.0) * np.maximum(t, 0.0) / tc["onset_half_life_h"])
    offset = np.exp(-np.log(2.0) * np.maximum(0.0, t - t_end) / tc["offset_half_life_h"])
    return onset * offset


def response_linear_predictor(
    params: dict[str, Any],
    indication: np.ndarray,
    auc_hnk: np.ndarray,
    auc_ref: dict[str, float],
    dser: np.ndarray,
    mg: np.ndarray,
) -> np.ndarray:
    """True logit of response probability for each patient (the ground-truth eta_i)."""
    r = params["response"]
    a = np.array([r["intercept"][i] for i in indication])
    b_dser = np.array([r["b_dser_per_um"][i] for i in indication])
    b_mg = np.array([r["b_mg_per_0p1_mmol_l"][i] for i in indication])
    ref = np.array([auc_ref[i] for i in indication])
    return (
        a
        + r["b_log_auc_hnk"] * np.log(auc_hnk / ref)
        + b_dser * (dser - r["dser_ref_um"])
        + b_mg * (mg - r["mg_ref_mmol_l"]) / 0.1
    )


def _score_noise(spec: dict[str, Any], size: int, rng: np.random.Generator) -> np.ndarray:
    return spec["visit_noise_sd"] * rng.standard_normal(size)


def _round_score(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    return np.round(np.clip(x, 0.0, spec["max"]), int(spec["decimals"]))


# --------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------


@dataclass
class SimulatedTrial:
    """The dataset (data contract), the per-subject truth and the population truth."""

    data: pd.DataFrame
    subjects: pd.DataFrame
    population: dict[str, Any]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``trial.csv``, ``truth_subjects.csv`` and ``truth_population.json`` to a folder."""
        out_dir = Path(out_dir)
        paths = {
            "data": out_dir / "trial.csv",
            "subjects": out_dir / "truth_subjects.csv",
            "population": out_dir / "truth_population.json",
        }
        self.write_to(**paths)
        return paths

    def write_to(self, data: str | Path, subjects: str | Path, population: str | Path) -> None:
        """Write the three outputs to the given paths (each atomically)."""
        write_csv(data, self.data)
        write_csv(subjects, self.subjects, float_format="%.8g")
        write_json(population, self.population)


def reference_exposure(params: dict[str, Any], rtol: float, atol: float) -> dict[str, float]:
    """AUC of total HNK to the primary endpoint for a typical patient, per indication."""
    pk = params["pk"]
    typical = pd.DataFrame({"ID": [1], "WT": [pk["reference_weight_kg"]], "CYP2B6_CLASS": ["NM"]})
    zero = json.loads(json.dumps(params))
    zero["pk"]["omega"] = {k: 0.0 for k in pk["omega"]}
    ind_pk = draw_pk_parameters(zero, typical, np.random.default_rng(0)).iloc[0].to_dict()
    hnk_cols = [PK_ANALYTES.index(a) for a in params["response"]["exposure_analytes"]]
    out = {}
    for ind, arm_name in params["response"]["reference_arm"].items():
        arm = params["arms"][arm_name]
        doses = build_regimen(arm["regimen"], pk["reference_weight_kg"])
        _, primary = visit_times(arm, doses)
        sol = integrate_pk(
            ind_pk, doses, np.array([primary]), params["molar_mass_g_mol"], rtol, atol
        )
        out[ind] = float(sol.auc[0, hnk_cols].sum())
    return out


def simulate_trial(config: dict[str, Any]) -> SimulatedTrial:
    """Simulate the virtual trial described by a validated config (see ``config.load_config``)."""
    sim = config["simulation"]
    seed = int(config["seeds"]["simulate"])
    params = apply_truth_overrides(load_parameters(sim["parameters"]), sim["truth"])
    rtol, atol = sim["ode"]["rtol"], sim["ode"]["atol"]
    rng_cov, rng_pk, rng_design, rng_obs, rng_resp = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    subjects = draw_subjects(params, sim["arms"], sim["population_mix"], rng_cov)
    ind_pk = draw_pk_parameters(params, subjects, rng_pk)
    auc_ref = reference_exposure(params, rtol, atol)
    codes = config["data"]["codes"]
    dose_code = {v: int(k) for k, v in codes["dose_cmt"].items()}
    obs_code = {v: int(k) for k, v in codes["observation"].items()}
    obs_code_col = codes["observation_code_column"]
    hnk_cols = [PK_ANALYTES.index(a) for a in params["response"]["exposure_analytes"]]
    ket_cols = [PK_ANALYTES.index("S_KET"), PK_ANALYTES.index("R_KET")]

    dose_level = allocate_dose_levels(params, subjects, rng_design)
    rows: list[dict[str, Any]] = []
    truth_rows: list[dict[str, Any]] = []
    for i, subj in subjects.iterrows():
        arm = params["arms"][subj["ARM"]]
        reg = arm["regimen"]
        if not np.isnan(dose_level[i]):
            reg = {**reg, "dose_mg_kg": float(dose_level[i])}
        n_days = int(rng_design.choice(reg["days"])) if "days" in reg else None
        doses = build_regimen(reg, float(subj["WT"]), n_days)
        t_pk = sampling_times(arm, doses, rng_design)
        t_visit, t_primary = visit_times(arm, doses)
        t_end = course_end(doses)
        # A dense grid for Cmax, plus the sampling times and the primary endpoint.
        grid = np.unique(
            np.concatenate(
                [
                    np.arange(0.0, t_end + 48.0, 1.0 / 12.0),
                    [d.end for d in doses],
                    t_pk,
                    [t_primary],
                ]
            )
        )
        pk_i = ind_pk.iloc[i].to_dict()
        sol = integrate_pk(pk_i, doses, grid, params["molar_mass_g_mol"], rtol, atol)
        at = {float(t): j for j, t in enumerate(sol.times)}
        conc_obs = sol.conc[[at[float(t)] for t in t_pk]]
        dv, blq, lloq = observe_concentrations(conc_obs, params, rng_obs)
        auc_primary = sol.auc[at[float(t_primary)]]
        cmax = sol.conc.max(axis=0)

        covs = {
            k: subj[k]
            for k in ("WT", "AGE", "SEX", "CYP2B6", "DSER", "MG", "INDICATION", "STUDY", "ARM")
        }
        endpoint = ENDPOINT_OF_INDICATION[subj["INDICATION"]]
        score_spec = params["response"]["scores"][endpoint]
        base_rows = {"ID": int(subj["ID"])}
        # Baseline score first (TIME 0, before the first dose), then doses, then the rest in time order.
        for d in doses:
            rows.append(
                {
                    **base_rows,
                    "TIME": d.time,
                    "EVID": EVID_DOSE,
                    "AMT": d.amt,
                    "RATE": d.rate,
                    "CMT": dose_code[d.target],
                    "ANALYTE": d.target,
                    "MDV": 1,
                    "BLQ": 0,
                    **covs,
                }
            )
        for j, t in enumerate(t_pk):
            for k, analyte in enumerate(PK_ANALYTES):
                rows.append(
                    {
                        **base_rows,
                        "TIME": float(t),
                        "EVID": EVID_OBSERVATION,
                        "ANALYTE": analyte,
                        obs_code_col: obs_code[analyte],
                        "DV": dv[j, k],
                        "MDV": 0,
                        "LLOQ": lloq[j, k],
                        "BLQ": int(blq[j, k]),
                        **covs,
                    }
                )
        truth_rows.append(
            {
                "ID": int(subj["ID"]),
                "ARM": subj["ARM"],
                "INDICATION": subj["INDICATION"],
                "ANCESTRY": subj["ANCESTRY"],
                "CYP2B6_CLASS": subj["CYP2B6_CLASS"],
                "N_DOSES": len(doses),
                "DOSE_MG_KG": reg.get("dose_mg_kg", np.nan),
                "TOTAL_DOSE_MG": sum(d.amt for d in doses),
                "COURSE_END_H": t_end,
                "PRIMARY_ENDPOINT_H": t_primary,
                **{f"AUC_{a}": auc_primary[k] for k, a in enumerate(PK_ANALYTES)},
                **{f"CMAX_{a}": cmax[k] for k, a in enumerate(PK_ANALYTES)},
                "AUC_HNK": float(auc_primary[hnk_cols].sum()),
                "CMAX_KET": float(sol.conc[:, ket_cols].sum(axis=1).max()),
                "_visits": t_visit,
                "_t_end": t_end,
                "_endpoint": endpoint,
                "_score_spec": score_spec,
                "_covs": covs,
            }
        )

    truth = pd.DataFrame(truth_rows)
    # Responses, vectorised over patients.
    eta = response_linear_predictor(
        params,
        truth["INDICATION"].to_numpy(),
        truth["AUC_HNK"].to_numpy(),
        auc_ref,
        subjects["DSER"].to_numpy(float),
        subjects["MG"].to_numpy(float),
    )
    n = len(truth)
    latent = eta + rng_resp.logistic(size=n)
    fall_primary = expit(latent)
    r_max = params["response"]["r_max"]
    responder_obs = np.zeros(n, dtype=int)
    baselines = np.zeros(n)
    for i in range(n):
        tr = truth_rows[i]
        spec = tr["_score_spec"]
        ind = truth.at[i, "INDICATION"]
        tc = params["response"]["time_course"][ind]
        lo = spec["baseline_min"]
        base = spec["baseline_mean"] + spec["baseline_sd"] * rng_resp.standard_normal()
        while not lo <= base <= spec["max"]:
            base = spec["baseline_mean"] + spec["baseline_sd"] * rng_resp.standard_normal()
        base = float(_round_score(np.array([base]), spec)[0])
        t_vis = tr["_visits"]
        g = time_course(t_vis, tr["_t_end"], tc) / time_course(
            np.array([truth.at[i, "PRIMARY_ENDPOINT_H"]]), tr["_t_end"], tc
        )
        fall = np.minimum(fall_primary[i] * g, r_max)
        score = base * (1.0 - fall) + _score_noise(spec, len(t_vis), rng_resp)
        score = np.where(t_vis == 0.0, base, _round_score(score, spec))
        baselines[i] = base
        t_primary = truth.at[i, "PRIMARY_ENDPOINT_H"]
        primary_idx = np.flatnonzero(np.isclose(t_vis, t_primary))
        if primary_idx.size:
            responder_obs[i] = int((base - score[primary_idx[0]]) / base >= 0.5)
        for t, y in zip(t_vis, score, strict=True):
            rows.append(
                {
                    "ID": int(truth.at[i, "ID"]),
                    "TIME": float(t),
                    "EVID": EVID_OBSERVATION,
                    "ANALYTE": tr["_endpoint"],
                    obs_code_col: obs_code[tr["_endpoint"]],
                    "DV": float(y),
                    "MDV": 0,
                    "BLQ": 0,
                    **tr["_covs"],
                }
            )

    truth = truth.drop(columns=[c for c in truth.columns if c.startswith("_")])
    truth["DSER"] = subjects["DSER"].to_numpy()
    truth["MG"] = subjects["MG"].to_numpy()
    truth["WT"] = subjects["WT"].to_numpy()
    truth["ETA_RESPONSE"] = eta
    truth["P_RESPONSE"] = expit(eta)
    truth["FALL_PRIMARY"] = fall_primary
    truth["RESPONDER_TRUE"] = (fall_primary >= 0.5).astype(int)
    truth["RESPONDER"] = responder_obs
    truth["BASELINE_SCORE"] = baselines
    truth = pd.concat([truth, ind_pk.drop(columns="ID")], axis=1)

    data = _assemble(rows, obs_code_col)
    population = {
        "ketamine_pmx_version": __version__,
        "seed": seed,
        "parameter_file": str(sim["parameters"]),
        "parameter_file_sha256": _sha256(sim["parameters"]),
        "arms": dict(sim["arms"]),
        "population_mix": dict(sim["population_mix"]),
        "truth_overrides": dict(sim["truth"]),
        "reference_auc_hnk_ng_h_ml": auc_ref,
        "parameters": params,
        "logit_scale_effects": {
            "b_log_auc_hnk": params["response"]["b_log_auc_hnk"],
            "b_dser_per_um": params["response"]["b_dser_per_um"],
            "b_mg_per_0p1_mmol_l": params["response"]["b_mg_per_0p1_mmol_l"],
            "intercept_logit": params["response"]["intercept"],
            "intercept_probability": {
                k: float(expit(v)) for k, v in params["response"]["intercept"].items()
            },
        },
    }
    population["response_by_arm"] = {
        arm: {
            "subjects": len(g),
            "responder_rate_observed": round(float(g["RESPONDER"].mean()), 4),
            "mean_true_p_response": round(float(g["P_RESPONSE"].mean()), 4),
        }
        for arm, g in truth.groupby("ARM", sort=True)
    }
    return SimulatedTrial(data=data, subjects=truth, population=population)


def pk_truth(population: dict[str, Any]) -> dict[str, float]:
    """The simulator's true PK values named as the enantiomer-specific PK models name them.

    ``population`` is ``truth_population.json``. Typical values are per 70 kg for a CYP2B6
    normal metaboliser: the model's cl_f is fm_nk * cl and cl_o the rest; e_cyp2b6 is the
    multiplier of cl_f; omegas are SDs of the log parameters; sigma_prop the proportional
    part of the residual error (the simulator adds a small additive part).
    """
    pk = population["parameters"]["pk"]
    out: dict[str, float] = {}
    for c, p in pk["enantiomers"].items():
        out[f"log_cl_f_pop[{c}]"] = p["fm_nk"] * p["cl"]
        out[f"log_cl_o_pop[{c}]"] = (1 - p["fm_nk"]) * p["cl"]
        for name in ("vc", "q", "vp", "cl_nk", "cl_hnk"):
            out[f"log_{name}_pop[{c}]"] = p[name]
        out[f"logit_fm_hnk_pop[{c}]"] = p["fm_hnk"]
        for group, omega in pk["omega"].items():
            out[f"omega_{group}[{c}]"] = omega
    for group in pk["omega"]:  # models with correlation: enantiomer
        out[f"rho_{group}"] = pk["enantiomer_eta_correlation"]
    for cls, mult in pk["cyp2b6_clf_multiplier"].items():
        if cls != "NM":
            out[f"e_cyp2b6[{cls}]"] = mult
    for analyte, sigma in pk["residual"]["sigma_prop"].items():
        out[f"sigma_prop[{analyte}]"] = sigma
    return out


def sample_pk_truth(population: dict[str, Any], subjects: pd.DataFrame) -> dict[str, float]:
    """The true PK values *of this trial's subjects*: :func:`pk_truth` with each value that
    depends on the subject effects drawn replaced by its realised value.

    A population value is estimable from one trial only up to the chance in its subjects'
    effects (a typical clearance to about omega / sqrt(n)). This is what an estimator that saw
    every subject's true parameters would report, the reference for the method's own error
    (as an NONMEM or Monolix simulation-estimation study reports against the simulated
    individuals): per BSV group, the typical values times exp of the mean effect; for cl_f,
    whose typical value is the CYP2B6 normal metaboliser's, the class means give the typical
    value (NM) and the multipliers; omegas are the SDs of the effects (about their mean, as the
    model centres them on its estimated typical value), rho the S/R correlation of the effects.
    Formation fractions and residual SDs have no subject-level draw and keep their values.
    ``subjects`` is ``truth_subjects.csv`` (its ``eta_<enantiomer>_<group>`` and
    ``CYP2B6_CLASS`` columns).
    """
    pk = population["parameters"]["pk"]
    out = pk_truth(population)
    cls = subjects["CYP2B6_CLASS"].to_numpy()
    for group in pk["omega"]:
        etas = {}
        for c in pk["enantiomers"]:
            eta = subjects[f"eta_{c}_{group}"].to_numpy(float)
            etas[c] = eta
            out[f"omega_{group}[{c}]"] = float(eta.std(ddof=1))
            if group == "cl":
                nm = eta[cls == "NM"].mean()
                out[f"log_cl_f_pop[{c}]"] *= float(np.exp(nm))
                out[f"log_cl_o_pop[{c}]"] *= float(np.exp(eta.mean()))
            else:
                out[f"log_{group}_pop[{c}]"] *= float(np.exp(eta.mean()))
        s_eta, r_eta = (etas[c] for c in ("S", "R"))
        if s_eta.std() > 0 and r_eta.std() > 0:
            out[f"rho_{group}"] = float(np.corrcoef(s_eta, r_eta)[0, 1])
    # The class multipliers as the model sees them: the class's mean cl effect against the
    # normal metabolisers' (the S and R effects of one subject are drawn together; averaged).
    eta_cl = np.mean([subjects[f"eta_{c}_cl"].to_numpy(float) for c in pk["enantiomers"]], axis=0)
    for c_name, mult in pk["cyp2b6_clf_multiplier"].items():
        if c_name != "NM" and (cls == c_name).any() and (cls == "NM").any():
            shift = eta_cl[cls == c_name].mean() - eta_cl[cls == "NM"].mean()
            out[f"e_cyp2b6[{c_name}]"] = mult * float(np.exp(shift))
    return out


def trial_summary(trial: SimulatedTrial) -> str:
    """A few lines on a simulated trial: subjects, observations, BLQ share, response rates."""
    d = trial.data
    obs = d[(d["EVID"] == EVID_OBSERVATION) & d["ANALYTE"].isin(PK_ANALYTES)]
    lines = [
        f"simulated trial: {d['ID'].nunique()} subjects, {len(d)} rows, "
        f"{len(obs)} concentrations ({100 * obs['BLQ'].mean():.1f}% BLQ)"
    ]
    for arm, v in trial.population["response_by_arm"].items():
        lines.append(
            f"  {arm}: {v['subjects']} subjects, responders {100 * v['responder_rate_observed']:.1f}% "
            f"(mean true P(response) {100 * v['mean_true_p_response']:.1f}%)"
        )
    per_analyte = obs.groupby("ANALYTE")["BLQ"].agg(["size", "mean"])
    lines += [
        f"  {a}: {int(r['size'])} observations, {100 * r['mean']:.1f}% BLQ"
        for a, r in per_analyte.iterrows()
    ]
    return "\n".join(lines)


DATA_COLUMNS = (
    "ID", "TIME", "EVID", "AMT", "RATE", "CMT", "DVID", "ANALYTE", "DV", "MDV", "LLOQ", "BLQ",
    "WT", "AGE", "SEX", "CYP2B6", "DSER", "MG", "INDICATION", "STUDY", "ARM",
)  # fmt: skip


def _assemble(rows: list[dict[str, Any]], obs_code_col: str) -> pd.DataFrame:
    data = pd.DataFrame(rows)
    # Order within a subject: by time; at equal times scores (baseline) before doses before
    # concentrations, so the baseline score at TIME 0 precedes the first dose.
    rank = np.where(
        data["EVID"] == EVID_DOSE, 1, np.where(data["ANALYTE"].isin(["MADRS", "NRS"]), 0, 2)
    )
    data = (
        data.assign(_rank=rank)
        .sort_values(["ID", "TIME", "_rank"], kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )
    for col in DATA_COLUMNS:
        if col not in data:
            data[col] = np.nan
    data["TIME"] = data["TIME"].round(4)
    data["AMT"] = data["AMT"].round(4)
    data["RATE"] = data["RATE"].round(4)
    data.loc[data["EVID"] == EVID_OBSERVATION, ["AMT", "RATE"]] = 0.0
    for col in ("CMT", "DVID"):
        data[col] = data[col].astype("Int64")
    if obs_code_col == "CMT":
        data = data.drop(columns="DVID")
        return data[[c for c in DATA_COLUMNS if c != "DVID"]]
    return data[list(DATA_COLUMNS)]


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
