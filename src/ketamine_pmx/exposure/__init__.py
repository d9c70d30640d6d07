"""Exposure: individual concentration-time metrics (AUC, Cmax) from the PK posterior, and
unit-infusion curves for regimens.
"""

from .draws import (
    SUM_ANALYTES,
    auc_of_level,
    cmax_grid,
    exposure_draws,
    exposure_metrics,
    load_exposures,
    metric_names,
    save_exposures,
    summarise_exposures,
)
from .unit_curves import (
    TAIL_RATE_TIMES,
    course_auc,
    unit_infusion_curves,
)

__all__ = [
    "SUM_ANALYTES",
    "TAIL_RATE_TIMES",
    "auc_of_level",
    "cmax_grid",
    "course_auc",
    "exposure_draws",
    "exposure_metrics",
    "load_exposures",
    "metric_names",
    "save_exposures",
    "summarise_exposures",
    "unit_infusion_curves",
]
