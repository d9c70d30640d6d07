"""Exposures read every NONMEM dose record: EVID 4 doses, EVID 3/4 resets (which empty the
AUC's compartment too); steady-state doses are refused, naming the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from ketamine_pmx.exposure import exposure_metrics, metric_names
from ketamine_pmx.models import ExposureError, load_pk_spec

SPEC = load_pk_spec(REPO / "models" / "pk_1cmt_iv_oral.yaml")
CL, VC = 5.0, 50.0
PARAMS = {
    k: np.full((1, 1, 1), v)
    for k, v in {"cl": CL, "vc": VC, "ka": 1.0, "f_oral": 0.6, "lag_oral": 0.25}.items()
}
WINDOW = np.array([30.0])


def records(rows: list[dict]) -> pd.DataFrame:
    base = {"ID": 1, "EVID": 1, "ANALYTE": "DRUG", "AMT": 0.0, "RATE": 0.0, "ROUTE": "", "SS": 0}
    return pd.DataFrame([{**base, **r, "II": 12.0 if r.get("SS") else 0.0} for r in rows])


def metrics(table: pd.DataFrame) -> dict[str, float]:
    values = exposure_metrics(SPEC, PARAMS, np.array([1]), table, WINDOW, [1.0])[0, 0]
    return dict(zip(metric_names(SPEC), values, strict=True))


def auc_bolus(amt: float, t_dose: float) -> float:
    """ng h/mL from a bolus at ``t_dose`` to the window's end."""
    return 1000.0 * amt / CL * (1.0 - np.exp(-CL / VC * (WINDOW[0] - t_dose)))


def test_an_evid_4_dose_is_a_dose_and_a_reset():
    alone = metrics(records([{"EVID": 4, "TIME": 10.0, "AMT": 80.0}]))
    assert alone["AUC_DRUG"] == pytest.approx(auc_bolus(80.0, 10.0), rel=1e-9)
    after = metrics(records([{"TIME": 0.0, "AMT": 100.0}, {"EVID": 4, "TIME": 10.0, "AMT": 80.0}]))
    assert after["AUC_DRUG"] == pytest.approx(alone["AUC_DRUG"], rel=1e-9)


def test_an_evid_3_reset_empties_every_compartment():
    kept = metrics(records([{"TIME": 0.0, "AMT": 100.0}, {"TIME": 10.0, "AMT": 80.0}]))
    reset = metrics(
        records(
            [
                {"TIME": 0.0, "AMT": 100.0},
                {"EVID": 3, "TIME": 10.0},
                {"TIME": 10.0, "AMT": 80.0},
            ]
        )
    )
    assert kept["AUC_DRUG"] == pytest.approx(
        auc_bolus(100.0, 0.0) + auc_bolus(80.0, 10.0), rel=1e-9
    )
    assert reset["AUC_DRUG"] == pytest.approx(auc_bolus(80.0, 10.0), rel=1e-9)


def test_a_steady_state_dose_is_refused_naming_its_rows():
    with pytest.raises(ExposureError, match=r"steady-state dose records.*'TIME': 0\.0"):
        metrics(records([{"TIME": 0.0, "AMT": 100.0, "SS": 1}]))
