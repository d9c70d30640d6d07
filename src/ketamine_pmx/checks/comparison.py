"""Model comparison by PSIS-LOO (ArviZ): tables, Pareto-k diagnostics and exact refits.

``compare`` runs ``arviz.loo`` on every model's pointwise log-likelihood (one variable at a
time: ``responder`` or ``pct_change`` for response models, ``y`` per concentration for PK
models) and ``arviz.compare`` on the results: elpd_loo, its SE, the difference to the best
model and the SE of that difference (dSE), p_loo, stacking weights. Observations whose Pareto
k exceeds the threshold (0.7: the importance ratios' tail is too heavy for PSIS to be
trusted) are counted and listed; for response models, where one refit takes seconds, their
contribution is replaced by an exact leave-one-out refit through ``arviz.reloo`` (the
refit answer ArviZ offers; ArviZ 0.23 has no moment matching), up to a configured number of
refits per model. PK models are not refitted (a refit takes minutes to hours); their high-k
observations are reported for the reader to weigh.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
from arviz.wrappers import SamplingWrapper

from ketamine_pmx.inference.response_fit import ResponseFitter, loo_refitter
from ketamine_pmx.models.response_model import OUTCOMES, prepare_response_data
from ketamine_pmx.models.spec import ResponseSpec

K_THRESHOLD = 0.7


class _PatientRefit(SamplingWrapper):
    """arviz.reloo adapter: refit a model without one patient, score that patient.

    ``refit(keep_mask)`` returns the InferenceData of a fit to the kept patients;
    ``score(idata, index)`` the pointwise log-likelihood (chain, draw) of the left-out
    patient under that posterior.
    """

    def __init__(self, idata_orig: az.InferenceData, n: int, refit: Callable, score: Callable):
        super().__init__(model=None, idata_orig=idata_orig)
        self.n, self.refit, self.score = n, refit, score

    def sel_observations(self, idx):
        keep = np.ones(self.n, bool)
        keep[np.asarray(idx).ravel()] = False
        return keep, int(np.asarray(idx).ravel()[0])

    def sample(self, modified_observed_data):
        keep = modified_observed_data
        if not (isinstance(keep, np.ndarray) and keep.shape == (self.n,)):
            # arviz probes each method with a dummy argument to see that it is implemented
            # (any exception but NotImplementedError says yes): never refit on a probe.
            raise TypeError("a refit takes the boolean mask of sel_observations")
        return self.refit(keep)

    def get_inference_data(self, fitted_model):
        return fitted_model

    def log_likelihood__i(self, excluded_obs, idata__i):
        return self.score(idata__i, excluded_obs)


def loo(
    idata: az.InferenceData,
    var_name: str,
    refit: Callable | None = None,
    score: Callable | None = None,
    k_threshold: float = K_THRESHOLD,
    max_refits: int = 0,
) -> tuple[az.ELPDData, dict[str, Any]]:
    """PSIS-LOO of one log-likelihood variable, with exact refits of the worst high-k points.

    Returns the (possibly refitted) ELPDData and a record of the Pareto-k diagnostics: counts
    over the threshold before and after, the worst k, and which observations were refitted.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ's high-k warning: reported below
        res = az.loo(idata, var_name=var_name, pointwise=True)
    res = _constant_points(res, idata.log_likelihood[var_name])
    k = np.asarray(res.pareto_k)
    high = np.flatnonzero(k > k_threshold)
    info: dict[str, Any] = {
        "n_points": int(k.size),
        "k_max": float(k.max(initial=-np.inf)),
        "n_k_over": int(high.size),
        "refitted": [],
    }
    if high.size and refit is not None and max_refits > 0:
        chosen = high[np.argsort(k[high])[::-1][:max_refits]]
        masked = res.copy()
        pk = masked.pareto_k.copy()
        not_chosen = np.setdiff1d(high, chosen)
        pk.values[not_chosen] = -np.inf  # only the chosen ones are refitted by reloo
        masked.pareto_k = pk
        wrapper = _PatientRefit(idata, k.size, refit, score)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "reloo is experimental"
            new = az.reloo(wrapper, loo_orig=masked, k_thresh=k_threshold, verbose=False)
        new.pareto_k.values[not_chosen] = k[not_chosen]
        res = new
        info["refitted"] = [int(i) for i in chosen]
    info["n_k_over_after_refit"] = int((np.asarray(res.pareto_k) > k_threshold).sum())
    return res, info


#: Points whose log-likelihood varies by less than this over the draws take the raw
#: importance-sampling LOO term (their ratios are within a factor exp(0.05) of each other).
FLAT_PTP = 0.05


def _constant_points(res: az.ELPDData, ll) -> az.ELPDData:
    """Exact LOO terms for points whose log-likelihood is (nearly) the same in every draw.

    A BLQ record far below the LLOQ has log P(y < LLOQ) close to 0 in every draw (on the
    default trial about 900 of 9360 PK records vary by less than 0.012 over 4000 draws);
    PSIS then fits a generalised Pareto tail to (nearly) identical ratios and returns k = inf
    or NaN and a NaN term, which makes the model's elpd NaN. With ratios this even, the raw
    importance-sampling estimate ``-log mean_s exp(-ll_s)`` is exact to within the ratios'
    spread (no tail to smooth), so it replaces the PSIS term and k is reported as 0. Leaving
    such a point out changes almost nothing, which is what the term says.
    """
    x = ll.stack(__sample__=("chain", "draw")).transpose(..., "__sample__").to_numpy()
    x = x.reshape(-1, x.shape[-1])
    flat = np.ptp(x, axis=1) < FLAT_PTP
    if not flat.any():
        return res
    res = res.copy()
    loo_i, pk = res.loo_i.copy(), res.pareto_k.copy()
    neg = -x[flat]
    top = neg.max(axis=1, keepdims=True)
    raw = -(np.log(np.mean(np.exp(neg - top), axis=1)) + top[:, 0])
    loo_i.values.reshape(-1)[flat] = raw
    pk.values.reshape(-1)[flat] = 0.0
    lppd = float(
        np.sum(np.log(np.mean(np.exp(x - x.max(axis=1, keepdims=True)), axis=1)) + x.max(axis=1))
    )
    elpd = float(loo_i.values.sum())
    res.loo_i, res.pareto_k = loo_i, pk
    res.elpd_loo, res.p_loo = elpd, lppd - elpd
    res.se = float(np.sqrt(loo_i.size * np.var(loo_i.values)))
    res.warning = bool((pk.values > K_THRESHOLD).any())
    return res


def compare(
    fits: Mapping[str, az.InferenceData],
    var_name: str,
    refitters: Mapping[str, tuple[Callable, Callable]] | None = None,
    k_threshold: float = K_THRESHOLD,
    max_refits: int = 0,
) -> tuple[pd.DataFrame, dict[str, az.ELPDData]]:
    """``arviz.compare`` over models (stacking weights) with Pareto-k columns per model."""
    refitters = refitters or {}
    loos, infos = {}, {}
    for name, idata in fits.items():
        refit, score = refitters.get(name, (None, None))
        loos[name], infos[name] = loo(idata, var_name, refit, score, k_threshold, max_refits)
    table = az.compare(loos, ic="loo", method="stacking")
    table.index.name = "model"
    table = table.reset_index()
    table.insert(1, "outcome", var_name)
    for col in ("n_points", "k_max", "n_k_over", "n_k_over_after_refit"):
        table[col] = [infos[m][col] for m in table["model"]]
    table["refitted"] = [" ".join(map(str, infos[m]["refitted"])) for m in table["model"]]
    # dSE in units of itself: how many standard errors each model is from the best.
    with np.errstate(divide="ignore", invalid="ignore"):
        table["d_over_dse"] = np.where(table["dse"] > 0, table["elpd_diff"] / table["dse"], 0.0)
    return table, loos


def pareto_k_table(loos: Mapping[str, az.ELPDData], ids: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Every observation's Pareto k per model (long format), for plots and for the reader."""
    rows = []
    for name, res in loos.items():
        k = np.asarray(res.pareto_k).ravel()
        rows.append(
            pd.DataFrame({"model": name, "point": ids.get(name, np.arange(k.size)), "pareto_k": k})
        )
    return (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["model", "point", "pareto_k"])
    )


def compare_response_models(
    fits: Mapping[str, az.InferenceData],
    specs: Mapping[str, ResponseSpec],
    outcomes: pd.DataFrame,
    exposures: pd.DataFrame | None,
    sampler: dict[str, Any],
    seed: int,
    comparison: dict[str, Any],
    fitter: Callable[..., Any] = ResponseFitter,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The response models compared by PSIS-LOO, outcome by outcome (``responder``, then
    ``pct_change``, each over the models whose log-likelihood has it), with exact refits of
    up to ``comparison["max_refits"]`` patients per model whose Pareto k exceeds
    ``comparison["k_threshold"]`` (the config's ``comparison`` section).

    A refit samples the model compiled on its data (``fitter(spec, data, sampler)``, an
    :class:`~ketamine_pmx.inference.ResponseFitter`; ``data`` from ``outcomes`` and
    ``exposures``) with seed ``seed``. A model is compiled only when one of its patients
    needs a refit, and then once for both outcomes. Returns each outcome's table
    (:func:`compare`) and the Pareto k of every patient by model and outcome
    (:func:`pareto_k_table` with an ``outcome`` column).
    """

    def compiled(name: str) -> Any:
        data = prepare_response_data(outcomes, specs[name], exposures)
        return fitter(specs[name], data, sampler)

    fitters = {n: functools.cache(functools.partial(compiled, n)) for n in fits}
    tables, paretos = {}, []
    for outcome in OUTCOMES:
        have = {n: f for n, f in fits.items() if outcome in f.log_likelihood}
        refitters = {n: loo_refitter(fitters[n], seed, outcome) for n in have}
        table, loos = compare(
            have, outcome, refitters, comparison["k_threshold"], comparison["max_refits"]
        )
        ids = {n: f.log_likelihood["patient"].to_numpy() for n, f in have.items()}
        tables[outcome] = table
        paretos.append(pareto_k_table(loos, ids).assign(outcome=outcome))
    return tables, pd.concat(paretos, ignore_index=True)


def compare_pk_models(
    fits: Mapping[str, az.InferenceData], comparison: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The PK models compared by PSIS-LOO of every concentration (``y``), without refits (one
    takes minutes to hours): the table (:func:`compare`) and the Pareto k of every point by
    model (``outcome`` ``concentration``), for the reader to weigh the points over
    ``comparison["k_threshold"]``."""
    table, loos = compare(fits, "y", None, comparison["k_threshold"], 0)
    return table, pareto_k_table(loos, {}).assign(outcome="concentration")
