"""Shared fixtures: the repository root, smoke-sized configs with absolute paths and the smoke
run of the workflow (one per test session, shared by every test that reads its results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ketamine_pmx.config import load_config

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = REPO / "data" / "truth" / "ketamine_virtual_trial.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def make_config(**simulation) -> dict:
    """The smoke config with an absolute parameter path and optional simulation overrides."""
    overrides = {"simulation": {"parameters": str(PARAMETERS), **simulation}}
    return load_config(REPO / "config" / "smoke.yaml", overrides)


@pytest.fixture
def smoke_config() -> dict:
    return make_config()


def snakemake_command(workdir, *args, configfiles=("config/smoke.yaml",)) -> list[str]:
    """The snakemake command line for the repository's workflow run in ``workdir``."""
    cmd = [
        *SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
    ]
    # targets and options first: --configfile takes every argument after it
    return [
        *cmd,
        *args,
        "--configfile",
        *[str(REPO / c) if not str(c).startswith("/") else str(c) for c in configfiles],
    ]


def run_snakemake(workdir, *args, configfiles=("config/smoke.yaml",)):
    """Run the workflow in ``workdir`` (smoke config unless told) and return the process."""
    return subprocess.run(
        snakemake_command(workdir, *args, configfiles=configfiles),
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The results directory of one complete smoke run (``<tmp>/results/smoke``)."""
    workdir = tmp_path_factory.mktemp("smoke")
    proc = run_snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "results" / "smoke"


def evaluate(model, outputs, point):
    """Values of model expressions at a point of the model's free (value) variables."""
    outputs = model.replace_rvs_by_values(outputs)
    return model.compile_fn(outputs, inputs=model.value_vars, on_unused_input="ignore")(point)


def save_run_posteriors(models, run: Path) -> None:
    """The PK and response posteriors of dosing ``ReferenceFits`` saved as a finished run's
    ``pk/<model>/posterior.nc`` and ``response/<model>/posterior.nc`` under ``run``."""
    import arviz as az

    from ketamine_pmx.inference import save_idata

    pk_spec, resp_spec = models.pk_spec, models.resp_spec
    pk = az.InferenceData(posterior=models.pk_posterior.unstack("sample"))
    pk.posterior.attrs.update(spec_sha256=pk_spec.sha256, model=pk_spec.name)
    resp = az.InferenceData(
        posterior=models.resp_posterior.unstack("sample"), constant_data=models.resp_const
    )
    resp.posterior.attrs.update(spec_sha256=resp_spec.sha256, model=resp_spec.name)
    save_idata(pk, run / "pk" / pk_spec.name / "posterior.nc")
    save_idata(resp, run / "response" / resp_spec.name / "posterior.nc")


def true_parameters(subjects: pd.DataFrame, data) -> dict[str, np.ndarray]:
    """The simulator's individual parameters as (subject, chain) arrays for pk_2cmt_metab."""
    s = subjects.set_index("ID").loc[data.subjects]
    out = {}
    names = {"cl_f": "clf", "vc": "vc", "q": "q", "vp": "vp", "cl_nk": "cl_nk"}
    names |= {"v_nk": "v_nk", "fm_hnk": "fm_hnk", "cl_hnk": "cl_hnk", "v_hnk": "v_hnk"}
    for name, col in names.items():
        out[name] = s[[f"S_{col}", f"R_{col}"]].to_numpy(float)
    out["cl_o"] = s[["S_cl", "R_cl"]].to_numpy(float) - out["cl_f"]
    return out


def clean_pk_table(dose_rows: pd.DataFrame, obs: pd.DataFrame, **constant) -> pd.DataFrame:
    """A clean table (the validator's output form) from simulated dose and observation rows:
    doses before observations at equal times, no censoring, ``constant`` columns (e.g.
    ``WT=70.0``) set for every row."""
    table = pd.concat([dose_rows, obs]).sort_values(["ID", "TIME", "EVID"], ascending=[1, 1, 0])
    table = table.reset_index(drop=True)
    table["MDV"] = (table["EVID"] != 0).astype(int)
    table["LLOQ"] = np.nan
    table["BLQ"] = 0
    for column, value in constant.items():
        table[column] = value
    return table
