"""Unit-infusion curves: every regimen's exposure from one infusion per chain.

:func:`unit_infusion_curves` gives, for each draw, patient and chain, the parent concentration
at the peak times and each level's AUC at the AUC times after a 1-mg infusion; by linearity a
course of n sessions of amount a every I hours is then::

    AUC(T) = a * sum_c w_c sum_(k<n) A1_c(T - I k)          (:func:`course_auc`)

The AUC is exact (the amount in one more, never eliminated compartment of the chain). Beyond
``TAIL_RATE_TIMES`` time constants of the slowest rate after the infusion every AUC equals the
AUC to infinity to machine precision, so one evaluation stands for all of those times.
"""

from __future__ import annotations

import numpy as np

from ketamine_pmx.exposure.draws import auc_of_level
from ketamine_pmx.models.pk_structure import TERMS_PER_BATCH, chain_concentrations
from ketamine_pmx.models.spec import PKSpec
from ketamine_pmx.pk import build_layout, np_conc_ng_ml, np_disposition

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


def unit_infusion_curves(
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
    batch = max(1, TERMS_PER_BATCH // max(1, n_obs))
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
        peak[lo:hi] = chain_concentrations(spec, layout, p, conc=np_conc_ng_ml).reshape(nb, -1)
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
                vals = chain_concentrations(spec, layout, p, conc=auc_of_level(lev))
                out = np.empty((nb, t.size))
                out[rows, cols] = vals
                out = np.where(tail, out[:, [last]], out)
                aucs[lev][lo:hi, pos] = out
    shape = (n_s, n_p, n_c)
    return peak.reshape(*shape, -1), {k: v.reshape(*shape, -1) for k, v in aucs.items()}


def course_auc(unit: np.ndarray, idx: np.ndarray, w: np.ndarray, amt: np.ndarray) -> np.ndarray:
    """AUC (sample, patient) of a course from unit-infusion AUCs (sample, patient, chain, time):
    superposition over the sessions (times ``idx``), chain weights ``w``, amount ``amt``."""
    return (unit[..., idx].sum(-1) * w).sum(-1) * amt[None, :]
