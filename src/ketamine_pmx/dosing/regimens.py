"""Candidate regimens: the configured grid and which patients each is open to.

A :class:`Regimen` is ``sessions`` identical zero-order infusions of ``duration_h`` every
``interval_h`` hours of one formulation, sized per kg (MDD) or by rate (CRPS)::

    amount per session = dose_mg_kg * WT     or     rate_mg_h * duration_h

:func:`regimen_grid` expands ``dosing.regimens`` per indication and setting and refuses values
above ``dosing.hard_limits``; :func:`open_mask` says which patients a regimen is open to (their
indication, setting and caps); :func:`auc_times` the times at which a unit infusion's AUC is
needed to superpose every regimen's course.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ketamine_pmx.config import ConfigError

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


def regimen_grid(dosing: dict[str, Any]) -> list[Regimen]:
    """Every candidate regimen of ``dosing.regimens`` (``dosing`` is the config's section of
    that name); a family that breaks a rule (a value above the hard limits, infusions longer
    than their interval, an incomplete grid) is a :class:`~ketamine_pmx.config.ConfigError`
    naming it."""
    hard = dosing["hard_limits"]
    out: list[Regimen] = []
    problems: list[str] = []
    for i, fam in enumerate(dosing["regimens"]):
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
# Exposures under the candidate regimens
# --------------------------------------------------------------------------------------


def auc_times(reg_shapes: list[Regimen], endpoint: dict[str, Any]) -> dict[int, list[float]]:
    """Times at which a unit infusion's AUC is needed, per number of sessions."""
    out = {}
    for r in reg_shapes:
        n, step, d = r.sessions, r.interval_h, r.duration_h
        h = float(endpoint["hours_after"])
        end = h if endpoint["reference"] == "first_dose" else step * (n - 1) + d + h
        out[n] = [end - step * k for k in range(n)]
    return out
