"""Glue: rule ppc_response -> ketamine_pmx.checks (response rates by group, calibration, LOO-PIT).

The exposure groups are tertiles of the reference response model's exposure metric (every
model grouped alike); none when that model has no exposure."""

import sys

import pandas as pd

from ketamine_pmx import checks
from ketamine_pmx.inference import load_response_idata
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.models import load_response_spec, log_exposure
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import calibration, loo_pit, response_ppc

sys.stderr = open(snakemake.log[0], "w", buffering=1)

idata = load_response_idata(snakemake.input.posterior)
reference_exposure = load_response_spec(snakemake.input.reference_spec).exposure
exposure = None
if reference_exposure:
    table = log_exposure(pd.read_csv(snakemake.input.exposures), reference_exposure["metric"])
    exposure = table.set_index("ID")["log_mean"]
groups = checks.response_groups(idata, exposure)
write_csv(snakemake.output.groups_table, groups, float_format="%.4g")
title = f"Observed and predicted response by group: {snakemake.wildcards.resp_model}"
write_text(snakemake.output.groups_page, table_page(groups, title))
write_figure(snakemake.output.groups, response_ppc(groups, "responder"))
write_figure(snakemake.output.groups_pct, response_ppc(groups, "pct_change"))
cal = checks.calibration_table(idata)
write_csv(snakemake.output.calibration_table, cal, float_format="%.4g")
write_figure(snakemake.output.calibration, calibration(cal))
pit = checks.loo_pit_values(idata, "pct_change")
write_csv(
    snakemake.output.loo_pit_table, pd.DataFrame([checks.loo_pit_summary(pit)]), float_format="%.4g"
)
write_figure(snakemake.output.loo_pit, loo_pit(pit))
print(groups.to_string(), file=sys.stderr)
