"""What a PK model needs from a clean dataset, as arrays: :class:`PKData`.

Each subject's chains (the enantiomers S and R, or one racemic chain) are pseudo-subjects
``subject * n_chain + chain`` of one dose/observation layout (:mod:`ketamine_pmx.pk`): each
chain receives its share of every dose (:data:`ketamine_pmx.contract.DOSE_TARGETS`), and the
whole model is one vectorised evaluation whatever the number of chains. Observations are on
the likelihood's scale (log for the log-proportional error model) and BLQ rows are censored at
their LLOQ (:func:`censored_observations`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ketamine_pmx.contract import DOSE_TARGETS, EVID_DOSE, EVID_OBSERVATION
from ketamine_pmx.models.spec import PKSpec, required_covariates
from ketamine_pmx.pk import DoseObsLayout, build_layout


class FitError(RuntimeError):
    """The fit could not be run on this data/spec combination."""


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class PKData:
    """What a PK model needs from a clean dataset, as arrays (built once, numpy)."""

    subjects: np.ndarray  # subject IDs, in model order
    wt: np.ndarray  # kg; NaN where the data lack it and the spec does not use it
    cyp_class: np.ndarray  # NM/IM/PM per subject
    obs: pd.DataFrame  # one row per modelled observation, in model order
    doses: pd.DataFrame
    layout: DoseObsLayout  # pseudo-subjects subject * n_chain + chain, all observations
    analytes: tuple[str, ...]
    data_sha256: str = ""
    excluded: dict[str, int] = field(default_factory=dict)


#: The clean table's column of each covariate a spec can use (:func:`.spec.required_covariates`).
COVARIATE_COLUMNS = {"WT": "WT", "CYP2B6": "CYP2B6_CLASS"}
#: How to do without each covariate, by the spec key that uses it.
_WITHOUT = {
    "covariates.allometry": "set covariates.allometry.enabled: false in the spec",
    "covariates.cyp2b6": "remove covariates.cyp2b6 from the spec",
}


def _subject_covariates(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each subject's first non-missing value of ``columns`` (baseline covariates), by ID in
    order of appearance; a column the table lacks is all missing."""
    present = [c for c in columns if c in table.columns]
    return table[present].groupby(table["ID"], sort=False).first().reindex(columns=columns)


def check_covariates(table: pd.DataFrame, spec: PKSpec, source: str = "the dataset") -> None:
    """Raise :class:`FitError` unless every subject with observations of the spec's analytes
    has each covariate the spec uses (:func:`.spec.required_covariates`, and only those).

    Cheap: call it before any expensive work. The message names ``source`` (the file the
    table was read from), the column and the spec key that needs it.
    """
    needed = required_covariates(spec)
    if not needed:
        return
    observed = (table["EVID"] == EVID_OBSERVATION) & table["ANALYTE"].isin(spec.analytes)
    subjects = table.loc[observed, "ID"].drop_duplicates()
    if subjects.empty:
        return
    first = _subject_covariates(table, [COVARIATE_COLUMNS[c] for c in needed]).loc[subjects]
    problems = []
    for col, key in needed.items():
        lacking = subjects[first[COVARIATE_COLUMNS[col]].isna().to_numpy()].tolist()
        if lacking:
            shown = ", ".join(map(str, lacking[:5])) + (", ..." if len(lacking) > 5 else "")
            problems.append(
                f"column {col} is missing for {len(lacking)} of {len(subjects)} subject(s) with "
                f"PK observations (ID {shown}); the spec key {key} needs it: give {col} for "
                f"every subject, or {_WITHOUT[key]}"
            )
    if problems:
        raise FitError(
            f"{source}: model {spec.name} ({spec.path}) needs covariates the data lack:\n  - "
            + "\n  - ".join(problems)
        )


def prepare_pk_data(table: pd.DataFrame, spec: PKSpec, source: str = "the dataset") -> PKData:
    """Select the spec's analytes and build per-chain dose/observation layouts.

    Only the covariates the spec uses must be present (:func:`check_covariates`; ``source``
    names the table's file in its message).
    """
    analytes = spec.analytes
    obs = table[(table["EVID"] == EVID_OBSERVATION) & table["ANALYTE"].isin(analytes)].copy()
    if obs.empty:
        present = sorted(set(table.loc[table["EVID"] == EVID_OBSERVATION, "ANALYTE"]))
        raise FitError(
            f"model {spec.name} observes {list(analytes)}, but the dataset has none of them "
            f"(it has {present})"
        )
    check_covariates(table, spec, source)
    subjects = obs["ID"].drop_duplicates().to_numpy()
    index = {sid: k for k, sid in enumerate(subjects)}
    first = _subject_covariates(table, ["WT", "CYP2B6_CLASS"])
    wt = first.loc[subjects, "WT"].to_numpy(float)
    cyp = first.loc[subjects, "CYP2B6_CLASS"].astype(object).to_numpy()
    doses = table[(table["EVID"] == EVID_DOSE) & table["ID"].isin(index)].copy()

    obs = obs.reset_index(drop=True)
    obs["subject"] = obs["ID"].map(index).astype(int)
    chain_level = [spec.level_of(a) for a in obs["ANALYTE"]]
    obs["chain"] = [c for c, _ in chain_level]
    obs["level"] = [lv for _, lv in chain_level]
    # One layout over pseudo-subjects (subject, chain) -> subject * n_chain + chain: each
    # chain receives its share of every dose (the enantiomer fraction of a racemic dose), and
    # the whole model is one vectorised evaluation whatever the number of chains.
    n_chain = len(spec.chains)
    chain_index = {ch: c for c, ch in enumerate(spec.chains)}
    layout = build_layout(
        **chain_doses(doses, index, spec),
        obs_subject=obs["subject"].to_numpy(np.int64) * n_chain
        + obs["chain"].map(chain_index).to_numpy(np.int64),
        obs_time_h=obs["TIME"].to_numpy(float),
        obs_level=obs["level"].to_numpy(np.int64),
        n_subject=len(subjects) * n_chain,
    )
    digest = hashlib.sha256(
        pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()
    ).hexdigest()
    return PKData(
        subjects=subjects,
        wt=wt,
        cyp_class=cyp,
        obs=obs,
        doses=doses,
        layout=layout,
        analytes=tuple(a for a in analytes if a in set(obs["ANALYTE"])),
        data_sha256=digest,
    )


# --------------------------------------------------------------------------------------
# Doses over pseudo-subjects, observations on the likelihood's scale
# --------------------------------------------------------------------------------------


def chain_doses(
    doses: pd.DataFrame, subject_index: dict[Any, int], spec: PKSpec
) -> dict[str, np.ndarray]:
    """``build_layout``'s dose arguments over pseudo-subjects ``subject * n_chain + chain``.

    Each chain receives its share of every dose (the enantiomer fraction of a racemic dose,
    :data:`DOSE_TARGETS`), into the depot for first-order absorption models, else the central
    compartment; ``subject_index`` maps IDs to subject positions.
    """
    n_chain = len(spec.chains)
    subject = doses["ID"].map(subject_index).to_numpy(np.int64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("subject", "time", "amt", "rate")}
    for c, chain in enumerate(spec.chains):
        frac = doses["ANALYTE"].map(lambda t, ch=chain: DOSE_TARGETS[t].get(ch, 0.0))
        frac = frac.to_numpy(float)
        parts["subject"].append(subject * n_chain + c)
        parts["time"].append(doses["TIME"].to_numpy(float))
        parts["amt"].append(doses["AMT"].to_numpy(float) * frac)
        parts["rate"].append(doses["RATE"].to_numpy(float) * frac)
    route = "depot" if spec.structure["absorption"] == "first_order" else "central"
    return {
        "dose_subject": np.concatenate(parts["subject"]),
        "dose_time_h": np.concatenate(parts["time"]),
        "dose_amt_mg": np.concatenate(parts["amt"]),
        "dose_rate_mg_h": np.concatenate(parts["rate"]),
        "dose_route": route,
    }


def tile_subjects(subject: np.ndarray, n_copies: int, per_copy: int) -> np.ndarray:
    """Pseudo-subject indices repeated for ``n_copies`` blocks of ``per_copy`` pseudo-subjects,
    copy j's indices shifted by ``j * per_copy`` (e.g. one block per posterior draw)."""
    return (np.asarray(subject)[None, :] + (np.arange(n_copies) * per_copy)[:, None]).ravel()


def tile_doses(doses: dict[str, Any], n_copies: int, per_copy: int) -> dict[str, Any]:
    """:func:`chain_doses` repeated for ``n_copies`` blocks of ``per_copy`` pseudo-subjects
    (see :func:`tile_subjects`); the observations take ``tile_subjects`` of their indices."""
    return {
        "dose_subject": tile_subjects(doses["dose_subject"], n_copies, per_copy),
        "dose_time_h": np.tile(doses["dose_time_h"], n_copies),
        "dose_amt_mg": np.tile(doses["dose_amt_mg"], n_copies),
        "dose_rate_mg_h": np.tile(doses["dose_rate_mg_h"], n_copies),
        "dose_route": doses["dose_route"],
    }


def analyte_index(data: PKData) -> np.ndarray:
    """Each observation's position in ``data.analytes`` (the models' ``analyte`` dim)."""
    return data.obs["ANALYTE"].map({a: k for k, a in enumerate(data.analytes)}).to_numpy()


def censored_observations(spec: PKSpec, data: PKData) -> tuple[np.ndarray, np.ndarray]:
    """Observed values on the likelihood's scale and their lower censoring bounds.

    BLQ rows take the LLOQ as value and bound (the censored likelihood gives P(DV < LLOQ));
    other rows have no bound (-inf). The scale is log for the log-proportional error model.
    """
    obs = data.obs
    blq = obs["BLQ"].to_numpy() == 1
    dv = obs["DV"].to_numpy(float)
    lloq = obs["LLOQ"].to_numpy(float)
    value = np.where(blq, lloq, dv)
    if spec.spec["residual"]["model"] == "log_proportional":
        bad = ~(value > 0)
        if bad.any():
            rows = obs.loc[bad, ["ID", "TIME", "ANALYTE", "DV"]].head(5).to_dict("records")
            raise FitError(
                f"model {spec.name} has a log-scale residual error, which needs DV > 0 (or "
                f"BLQ rows with LLOQ > 0); {int(bad.sum())} observation(s) are not, e.g. {rows}. "
                "Mark them BLQ or use an additive/combined residual model."
            )
        value = np.log(value)
    lower = np.where(blq, value, -np.inf)
    return value, lower
