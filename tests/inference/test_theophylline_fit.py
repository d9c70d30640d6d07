"""Real data: the one-compartment oral model fitted to theophylline against published fits.

nlmixr2 (SAEM) on the same data and model (tests/data/theophylline/README.md): ka 1.57 1/h,
CL 2.76 L/h, V 31.5 L, additive residual SD 0.693 mg/L. A correct Bayesian fit with weakly
informative priors must land within 10% (structural) and 15% (residual) of these.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from ketamine_pmx.checks import diagnostics_table, gate, run_statistics
from ketamine_pmx.config import load_config, sampler_settings
from ketamine_pmx.data import load_dataset
from ketamine_pmx.inference import fit_pk
from ketamine_pmx.models import load_pk_spec

PUBLISHED = {"ka": 1.57, "cl": 2.76, "vc": 31.5}
PUBLISHED_SIGMA_MG_L = 0.693


@pytest.fixture(scope="module")
def theophylline_fit():
    config = load_config(REPO / "config" / "theophylline.yaml")
    table = load_dataset(REPO / config["data"]["path"], config["data"]).table
    spec = load_pk_spec(REPO / "models" / "pk_1cmt_oral.yaml")
    return fit_pk(table, spec, sampler_settings(config, "pk"), seed=config["seeds"]["fit_pk"])


def test_typical_values_match_nlmixr2(theophylline_fit):
    idata, data = theophylline_fit
    assert len(data.subjects) == 12 and len(data.obs) == 132
    post = idata.posterior
    for name, published in PUBLISHED.items():
        mean = float(np.exp(post[f"log_{name}_pop"]).mean())
        assert mean == pytest.approx(published, rel=0.10), name
    sigma_mg_l = float(post["sigma_add"].mean()) / 1000.0  # the model works in ng/mL
    assert sigma_mg_l == pytest.approx(PUBLISHED_SIGMA_MG_L, rel=0.15)


def test_between_subject_variability_is_in_the_published_range(theophylline_fit):
    post = theophylline_fit[0].posterior
    # nlmixr2's CVs 71.5 / 27.6 / 13.4 % correspond to log-scale SDs of about .64 / .27 / .13.
    omega = {g: float(post[f"omega_{g}"].mean()) for g in ("ka", "cl", "vc")}
    assert 0.4 < omega["ka"] < 1.0 and 0.15 < omega["cl"] < 0.45 and omega["vc"] < 0.3


def test_the_fit_passes_the_gate(theophylline_fit):
    idata = theophylline_fit[0]
    rules = {"rhat_max": 1.01, "ess_min": 400, "max_divergences": 0, "e_bfmi_min": 0.3}
    assert gate(diagnostics_table(idata), run_statistics(idata), rules) == []
