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

from ketamine_pmx.contract import (
    DOSE_EVIDS,
    DOSE_TARGETS,
    EVID_OBSERVATION,
    EVID_RESET,
    EVID_RESET_DOSE,
)
from ketamine_pmx.models.spec import PKSpec, known_routes, required_covariates, resolve_route
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


#: EVIDs of the rows :func:`chain_doses` reads: doses, resets, resets and doses.
DOSE_RECORD_EVIDS = (*DOSE_EVIDS, EVID_RESET)
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
    names the table's file in its message). An observation sees the dose and reset records of
    its time that come before it in the table (NONMEM's record order, :func:`obs_after_events`;
    the ``after_events`` column of ``obs``).
    """
    analytes = spec.analytes
    is_obs = ((table["EVID"] == EVID_OBSERVATION) & table["ANALYTE"].isin(analytes)).to_numpy()
    obs = table[is_obs].copy()
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
    # dose and reset records (EVID 1, 3 and 4)
    doses = table[table["EVID"].isin(DOSE_RECORD_EVIDS) & table["ID"].isin(index)].copy()

    mine = table["ID"].isin(index).to_numpy()
    after = obs_after_events(table[mine], spec, source)[is_obs[mine]]
    obs = obs.reset_index(drop=True)
    obs["after_events"] = after
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
        **chain_doses(doses, index, spec, source),
        obs_subject=obs["subject"].to_numpy(np.int64) * n_chain
        + obs["chain"].map(chain_index).to_numpy(np.int64),
        obs_time_h=obs["TIME"].to_numpy(float),
        obs_level=obs["level"].to_numpy(np.int64),
        n_subject=len(subjects) * n_chain,
        obs_after_events=after,
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


def obs_after_events(table: pd.DataFrame, spec: PKSpec, source: str = "the dataset") -> np.ndarray:
    """Per row of ``table``: whether it follows, in the table's row order, a record of the
    same subject and time that an observation at that time sees (NONMEM's reading of a data
    file): a reset (EVID 3 or 4), a steady-state dose (SS 1/2) or a bolus (RATE 0, AMT > 0)
    into the central compartment or a metabolite's. Infusions and depot doses add nothing at
    the time they start, so an observation after them stays False (the engine's fast path).

    An observation with such records both before and after it at its time cannot be given
    NONMEM's meaning (the engine sees all events of a time or none): :class:`FitError`, naming
    ``source`` and the rows.
    """
    evid = table["EVID"].to_numpy(int)
    event = np.isin(evid, (EVID_RESET, EVID_RESET_DOSE))
    dosing = np.isin(evid, DOSE_EVIDS)
    if dosing.any():
        doses = table[dosing]
        route = dose_routes(doses, spec, source)
        declared = spec.structure.get("routes", {})
        # a bolus seen at its time: into the central compartment or a metabolite's, no depot
        central = np.array(
            [
                declared.get(r, {}).get("compartment", r) != "depot"
                and "ka" not in declared.get(r, {})
                for r in route
            ],
            dtype=bool,
        )
        bolus = (doses["RATE"].to_numpy(float) == 0) & (doses["AMT"].to_numpy(float) > 0)
        ss = _dose_column(doses, "SS") > 0
        event[dosing] |= ss | (bolus & central)
    if not event.any():
        return np.zeros(len(table), dtype=bool)
    keys = [table["ID"].to_numpy(), table["TIME"].to_numpy(float)]
    before = pd.Series(event.astype(int)).groupby(keys, sort=False).cumsum().to_numpy()
    total = pd.Series(event.astype(int)).groupby(keys, sort=False).transform("sum").to_numpy()
    after = (before > 0) & ~event
    observed = evid == EVID_OBSERVATION
    between = observed & after & (total > before)
    if between.any():
        rows = table.loc[between, ["ID", "TIME"]].head(5).to_dict("records")
        raise FitError(
            f"{source}: observation row(s) at {rows} lie between dose or reset records of their "
            "own time (a bolus into the central compartment, a steady-state dose or EVID 3/4): "
            "an observation sees every such record of its time or none; place it before or "
            "after all of them"
        )
    return after & observed


# --------------------------------------------------------------------------------------
# Doses over pseudo-subjects, observations on the likelihood's scale
# --------------------------------------------------------------------------------------


#: Dose-record columns of the clean table and their value where a table lacks them (a table
#: written before they existed): the spec's default route, no steady state, no interval.
DOSE_RECORD_DEFAULTS: dict[str, Any] = {"ROUTE": "", "SS": 0, "II": 0.0}
#: RATE codes of a dose whose infusion rate (-1) or duration (-2) the route's parameters give,
#: as ``build_layout``'s ``dose_rate_mode``.
RATE_MODES = {-1.0: 1, -2.0: 2}


def _dose_column(doses: pd.DataFrame, column: str) -> np.ndarray:
    """A dose-record column, or its default (:data:`DOSE_RECORD_DEFAULTS`) where the table lacks
    it; a missing ROUTE value is empty (the default route)."""
    default = DOSE_RECORD_DEFAULTS[column]
    if column not in doses.columns:
        return np.full(len(doses), default, dtype=object if column == "ROUTE" else float)
    values = doses[column]
    if column == "ROUTE":
        return values.fillna("").astype(str).to_numpy(object)
    return values.fillna(default).to_numpy(float)


def dose_routes(doses: pd.DataFrame, spec: PKSpec, source: str = "the dataset") -> np.ndarray:
    """The spec route of each dose row (:func:`.spec.resolve_route`: an empty ROUTE is the
    spec's default route; ``iv``/``oral`` stand for central/depot where the spec declares no
    route of that name); :class:`FitError` naming ``source``, the rows and the spec where a
    dose's route is not one of the spec's."""
    given = _dose_column(doses, "ROUTE")
    names = {name: resolve_route(spec.structure, name) for name in set(given)}
    unknown = sorted(name for name, route in names.items() if route is None)
    if unknown:
        rows = doses.loc[np.isin(given, unknown), ["ID", "TIME"]].head(5).to_dict("records")
        raise FitError(
            f"{source}: dose route(s) {unknown} (column ROUTE; e.g. {rows}) are not routes of "
            f"model {spec.name} ({spec.path}), which has {list(known_routes(spec.structure))}: "
            "declare them under structure.routes or give a route the model has"
        )
    return np.array([names[name] for name in given], dtype=object).astype(str)


def chain_doses(
    doses: pd.DataFrame, subject_index: dict[Any, int], spec: PKSpec, source: str = "the dataset"
) -> dict[str, np.ndarray]:
    """``build_layout``'s dose and reset arguments over pseudo-subjects ``subject * n_chain +
    chain``.

    ``doses`` holds dose rows (EVID 1 and 4) and may hold reset rows (EVID 3; EVID 4 resets
    and doses). Each chain receives its share of every dose (the enantiomer fraction of a
    racemic dose, :data:`DOSE_TARGETS`; steady-state doses split like amounts) by the dose's
    route (:func:`dose_routes`), with its steady state (SS, II) and modelled rate or duration
    (RATE -1/-2); a reset, and an SS=1 dose, resets every chain of the subject. A dose's timing
    is modelled (``dose_timing_modelled``) where its route has a lag, its RATE is -1/-2, or
    its route has a bioavailability and the dose is an infusion at a data rate.
    ``subject_index`` maps IDs to subject positions; ``source`` names the table in errors.
    """
    n_chain = len(spec.chains)
    evid = doses["EVID"].to_numpy(int)
    resets = doses[np.isin(evid, (EVID_RESET, EVID_RESET_DOSE))]
    doses = doses[np.isin(evid, DOSE_EVIDS)]
    subject = doses["ID"].map(subject_index).to_numpy(np.int64)
    route = dose_routes(doses, spec, source)
    ss = _dose_column(doses, "SS").astype(np.int64)
    ii = _dose_column(doses, "II")
    rate = doses["RATE"].to_numpy(float)
    mode = np.array([RATE_MODES.get(r, 0) for r in rate], dtype=np.int64)
    rate = np.where(mode > 0, 0.0, rate)
    fracs = [
        doses["ANALYTE"].map(lambda t, ch=chain: DOSE_TARGETS[t].get(ch, 0.0)).to_numpy(float)
        for chain in spec.chains
    ]
    split = (mode == 1) & np.any([(f > 0) & (f < 1) for f in fracs], axis=0)
    if split.any():
        rows = doses.loc[split, ["ID", "TIME", "ANALYTE"]].head(5).to_dict("records")
        raise FitError(
            f"{source}: model {spec.name} ({spec.path}) splits the dose(s) {rows} between its "
            "chains, and a modelled infusion rate (RATE -1) is one chain's rate: give RATE -2 "
            "(a modelled duration) or the dose's rate"
        )
    timing = _timing_modelled(spec, route, mode, rate, doses, source)
    time = doses["TIME"].to_numpy(float)
    amt = doses["AMT"].to_numpy(float)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in DOSE_KEYS}
    r_subj = resets["ID"].map(subject_index).to_numpy(np.int64)
    r_time = resets["TIME"].to_numpy(float)
    for c, frac in enumerate(fracs):
        # A chain that receives nothing from a steady-state dose or a dose of modelled rate or
        # duration gets no dose (an SS=1 dose still resets it); otherwise a dose of 0.
        keep = (frac > 0) | ((ss == 0) & (mode == 0))
        parts["dose_subject"].append(subject[keep] * n_chain + c)
        parts["dose_time_h"].append(time[keep])
        parts["dose_amt_mg"].append(amt[keep] * frac[keep])
        parts["dose_rate_mg_h"].append(rate[keep] * frac[keep])
        parts["dose_route"].append(route[keep])
        parts["dose_ss"].append(ss[keep])
        parts["dose_ii_h"].append(ii[keep])
        parts["dose_rate_mode"].append(mode[keep])
        parts["dose_timing_modelled"].append(timing[keep])
        ss1 = ~keep & (ss == 1)
        parts["reset_subject"] += [r_subj * n_chain + c, subject[ss1] * n_chain + c]
        parts["reset_time_h"] += [r_time, time[ss1]]
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["dose_route"] = out["dose_route"].astype(str)
    return out


#: The keys of :func:`chain_doses` (each per dose, but the resets').
DOSE_KEYS = (
    "dose_subject",
    "dose_time_h",
    "dose_amt_mg",
    "dose_rate_mg_h",
    "dose_route",
    "dose_ss",
    "dose_ii_h",
    "dose_rate_mode",
    "dose_timing_modelled",
    "reset_subject",
    "reset_time_h",
)


def _timing_modelled(
    spec: PKSpec,
    route: np.ndarray,
    mode: np.ndarray,
    rate: np.ndarray,
    doses: pd.DataFrame,
    source: str,
) -> np.ndarray:
    """Per dose: whether its timing is a model parameter (a lag, a modelled rate or duration,
    the bioavailability of a data-rate infusion, which sets its duration); :class:`FitError`
    where a dose of RATE -1/-2 has a route without the parameter."""
    declared = spec.structure.get("routes", {})
    timing = mode > 0
    for name in np.unique(route):
        cfg = declared.get(str(name), {})
        of = route == name
        timing[of & ("lag" in cfg)] = True
        timing[of & ("f" in cfg) & (rate > 0)] = True
        for m, key in ((1, "rate"), (2, "duration")):
            lacking = of & (mode == m)
            if lacking.any() and key not in cfg:
                rows = doses.loc[lacking, ["ID", "TIME"]].head(5).to_dict("records")
                fix = (
                    f"give structure.routes.{name}.{key} a parameter"
                    if name in declared
                    else f"declare a route with a {key} parameter under structure.routes and "
                    "name it in the doses' ROUTE"
                )
                raise FitError(
                    f"{source}: dose(s) {rows} have RATE {-m} (a modelled infusion {key}), but "
                    f"route {str(name)!r} of model {spec.name} ({spec.path}) has no {key}: {fix}"
                )
    return timing


def tile_subjects(subject: np.ndarray, n_copies: int, per_copy: int) -> np.ndarray:
    """Pseudo-subject indices repeated for ``n_copies`` blocks of ``per_copy`` pseudo-subjects,
    copy j's indices shifted by ``j * per_copy`` (e.g. one block per posterior draw)."""
    return (np.asarray(subject)[None, :] + (np.arange(n_copies) * per_copy)[:, None]).ravel()


def tile_doses(doses: dict[str, Any], n_copies: int, per_copy: int) -> dict[str, Any]:
    """:func:`chain_doses` repeated for ``n_copies`` blocks of ``per_copy`` pseudo-subjects
    (see :func:`tile_subjects`); the observations take ``tile_subjects`` of their indices."""
    out = {}
    for key, value in doses.items():
        if key in ("dose_subject", "reset_subject"):
            out[key] = tile_subjects(value, n_copies, per_copy)
        elif np.ndim(value) == 0:  # one value for every dose
            out[key] = value
        else:
            out[key] = np.tile(value, n_copies)
    return out


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
