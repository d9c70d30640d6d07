"""Per-patient outcomes at each indication's primary endpoint, from a clean dataset.

The primary endpoint of an indication is a time after a reference event, from the config's
``response.endpoints``: MDD, the MADRS 24 h after the first dose; CRPS, the pain NRS one week
after the end of the infusion course (the end of the last infusion). For each patient this
module finds

- the baseline score: the last score at or before the first dose;
- the score at the primary endpoint: the visit nearest the planned time, within the
  endpoint's tolerance (a patient without such a visit has no primary outcome and is
  listed as excluded, never silently dropped);
- the fractional fall ``(baseline - score) / baseline``, the percent change from baseline
  ``100 * (score - baseline) / baseline`` (negative is improvement) and the responder flag
  (fall >= ``response.responder_fall``, by default a >= 50 % fall);
- the patient's covariates (WT, CYP2B6 class, D-serine, Mg, indication) and the primary
  endpoint time, which is also the end of the exposure window of ``ketamine_pmx.exposure``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ketamine_pmx.contract import DOSE_EVIDS, ENDPOINT_OF_INDICATION, EVID_OBSERVATION

HOURS_PER_WEEK = 168.0
COVARIATES = ("WT", "AGE", "SEX", "CYP2B6_CLASS", "DSER", "MG", "INDICATION")


class OutcomeError(ValueError):
    """The dataset cannot give the outcomes the config asks for."""


@dataclass
class Outcomes:
    """One row per patient with a primary outcome; the excluded patients and why."""

    table: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["ID", "reason"]))


def course_times(table: pd.DataFrame) -> pd.DataFrame:
    """First dose time and end of the last infusion (course end) per patient.

    Every dose record counts (EVID 1 and 4; ADDL doses are rows of the clean table already),
    each by its own dose: a steady-state record (SS 1/2) is one dose at its time, not the
    earlier doses its steady state stands for. A dose of modelled rate or duration (RATE
    -1/-2) has no duration in the data and ends the course at its start.
    """
    doses = table[table["EVID"].isin(DOSE_EVIDS)]
    if doses.empty:
        raise OutcomeError("the dataset has no dose records (EVID 1 or 4)")
    rate = doses["RATE"].to_numpy(float)
    dur = np.where(rate > 0, doses["AMT"].to_numpy(float) / np.where(rate > 0, rate, 1.0), 0.0)
    ends = doses["TIME"].to_numpy(float) + dur
    out = (
        pd.DataFrame({"ID": doses["ID"].to_numpy(), "start": doses["TIME"].to_numpy(), "end": ends})
        .groupby("ID", sort=False)
        .agg(FIRST_DOSE_H=("start", "min"), COURSE_END_H=("end", "max"))
    )
    return out


def primary_time(
    indication: str, first_dose: float, course_end: float, response: dict[str, Any]
) -> float:
    """Planned time (h since first record) of the primary endpoint of one patient
    (``response`` is the config's section of that name)."""
    ep = response["endpoints"][indication]
    ref = {"first_dose": first_dose, "course_end": course_end}[ep["reference"]]
    return float(ref + ep["hours_after"])


def primary_times(table: pd.DataFrame, response: dict[str, Any]) -> pd.Series:
    """Planned primary endpoint time per patient with doses (index ID); ``response`` is the
    config's section of that name."""
    course = course_times(table)
    indication = table.groupby("ID", sort=False)["INDICATION"].first()
    unknown = sorted(set(indication.dropna()) - set(response["endpoints"]))
    if unknown:
        raise OutcomeError(
            f"response.endpoints: no primary endpoint configured for indication(s) {unknown}"
        )
    return pd.Series(
        [
            primary_time(
                indication[i], course.at[i, "FIRST_DOSE_H"], course.at[i, "COURSE_END_H"], response
            )
            for i in course.index
        ],
        index=course.index,
        name="PRIMARY_H",
    )


def outcome_table(table: pd.DataFrame, response: dict[str, Any]) -> Outcomes:
    """Baseline, primary score, change and responder flag per patient (see module docstring);
    ``response`` is the config's section of that name."""
    course = course_times(table)
    first = table.groupby("ID", sort=False).first()
    rows, excluded = [], []
    scores = table[
        (table["EVID"] == EVID_OBSERVATION)
        & table["ANALYTE"].isin(set(ENDPOINT_OF_INDICATION.values()))
    ]
    by_id = dict(tuple(scores.groupby("ID", sort=False)))
    for pid in first.index:
        ind = first.at[pid, "INDICATION"]
        if pid not in course.index:
            excluded.append((pid, "no dose records"))
            continue
        if ind not in response["endpoints"]:
            excluded.append((pid, f"no primary endpoint configured for indication {ind!r}"))
            continue
        ep = response["endpoints"][ind]
        s = by_id.get(pid)
        if s is None:
            excluded.append((pid, "no score records"))
            continue
        s = s[(s["ANALYTE"] == ep["score"]) & s["DV"].notna()]
        t0 = course.at[pid, "FIRST_DOSE_H"]
        pre = s[s["TIME"] <= t0]
        if pre.empty:
            excluded.append((pid, f"no baseline {ep['score']} at or before the first dose"))
            continue
        base = float(pre["DV"].iloc[-1])
        if base <= 0:
            excluded.append(
                (pid, f"baseline {ep['score']} is {base:g}; a fall needs a baseline > 0")
            )
            continue
        t_p = primary_time(ind, t0, course.at[pid, "COURSE_END_H"], response)
        post = s[s["TIME"] > t0]
        gap = (post["TIME"] - t_p).abs()
        if post.empty or gap.min() > ep["tolerance_h"]:
            excluded.append(
                (
                    pid,
                    f"no {ep['score']} within {ep['tolerance_h']:g} h of the primary endpoint "
                    f"({t_p:g} h)",
                )
            )
            continue
        score = float(post["DV"].to_numpy()[int(np.argmin(gap.to_numpy()))])
        fall = (base - score) / base
        rows.append(
            {
                "ID": pid,
                **{c: first.at[pid, c] for c in COVARIATES if c in first.columns},
                "SCORE": ep["score"],
                "BASELINE": base,
                "PRIMARY": score,
                "PRIMARY_H": t_p,
                "FALL": fall,
                "PCT_CHANGE": -100.0 * fall,
                "RESPONDER": int(fall >= response["responder_fall"] - 1e-12),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        reasons = "; ".join(sorted({r for _, r in excluded}))
        raise OutcomeError(f"no patient has a primary outcome ({reasons or 'no patients'})")
    return Outcomes(out, pd.DataFrame(excluded, columns=["ID", "reason"]))
