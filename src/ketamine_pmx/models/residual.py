r"""The residual-error model: an observation's distribution given its predicted concentration.

Per analyte a, with C the predicted concentration (ng/mL) and DV the measurement::

    log_proportional:  log DV ~ Normal(log max(C, floor), sigma_prop[a])
    proportional:      DV     ~ Normal(C, sigma_prop[a] max(C, floor))
    additive:          DV     ~ Normal(C, sigma_add[a])
    combined:          DV     ~ Normal(C, sqrt(sigma_add[a]^2 + sigma_prop[a]^2 C^2))

with floor = :data:`CONC_FLOOR_NG_ML` (a prediction no dose has reached yet is 0). The model
works in ng/mL; the prior scale of ``sigma_add`` is given in the spec's ``residual.unit``
(:func:`sigma_prior_sd` converts it). The mean and
SD of the observation on the likelihood's scale (:func:`residual_mean_sd`) are written once,
for numpy and for PyTensor alike, and serve the population model's likelihood, the empirical
Bayes estimates, the per-patient posteriors of dosing and the replicate observations of the
predictive checks (:func:`draw_observations`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ketamine_pmx.contract import unit_factor

#: Concentration floor (ng/mL) before taking logs: an observation that no dose has reached yet.
CONC_FLOOR_NG_ML = 1e-9
#: The residual SDs of each error model, in the order the population model declares them.
RESIDUAL_SIGMAS = {
    "log_proportional": ("sigma_prop",),
    "proportional": ("sigma_prop",),
    "additive": ("sigma_add",),
    "combined": ("sigma_prop", "sigma_add"),
}


def residual_mean_sd(
    model: str, pred: Any, sigma_prop: Any = None, sigma_add: Any = None, xp: Any = np
) -> tuple[Any, Any]:
    """Mean and SD of the observations on the likelihood's scale (log for
    ``log_proportional``) at predicted concentrations ``pred`` (ng/mL).

    ``sigma_prop``/``sigma_add`` broadcast against ``pred`` (the error model's own SDs are
    needed, the others ignored); ``xp`` is ``numpy`` or ``pytensor.tensor``. The SD is not
    broadcast to ``pred``'s shape.
    """
    if model not in RESIDUAL_SIGMAS:
        raise ValueError(f"residual model {model!r} is not one of {list(RESIDUAL_SIGMAS)}")
    if model == "log_proportional":
        return xp.log(xp.maximum(pred, CONC_FLOOR_NG_ML)), sigma_prop
    if model == "proportional":
        return pred, sigma_prop * xp.maximum(pred, CONC_FLOOR_NG_ML)
    if model == "additive":
        return pred, sigma_add
    return pred, xp.sqrt(sigma_add**2 + (sigma_prop * pred) ** 2)


def draw_observations(
    model: str,
    pred: np.ndarray,
    rng: np.random.Generator,
    sigma_prop: Any = None,
    sigma_add: Any = None,
) -> np.ndarray:
    """Replicate observations (natural scale, ng/mL) at predicted concentrations ``pred``, one
    standard-normal draw of ``rng`` per element of ``pred``.

    A log-proportional replicate is ``pred * exp(sigma_prop z)``, which needs no floor (a
    prediction of 0 replicates as 0, below any LLOQ).
    """
    z = rng.standard_normal(np.shape(pred))
    if model == "log_proportional":
        return pred * np.exp(sigma_prop * z)
    mu, sd = residual_mean_sd(model, pred, sigma_prop, sigma_add)
    return mu + sd * z


#: The unit of a residual block's additive prior scale when it names none.
DEFAULT_RESIDUAL_UNIT = "ng/mL"


def sigma_prior_sd(residual: dict[str, Any], name: str) -> float:
    """The half-normal prior SD of residual SD ``name`` (``sigma_prop`` or ``sigma_add``) of a
    spec's (validated) ``residual`` block, on the model's scale: ``sigma_prop`` as given (it
    has no unit), ``sigma_add`` from ``residual.unit`` (default ng/mL) to ng/mL, e.g. 2 mg/L
    is 2000 ng/mL."""
    sd = float(residual[f"{name}_prior_sd"])
    if name == "sigma_add":
        sd *= unit_factor("conc", residual.get("unit", DEFAULT_RESIDUAL_UNIT))
    return sd
