"""Glue: rule ppc_response -> ketamine_pmx.checks (response rates by group, calibration, LOO-PIT)."""

import sys

import pandas as pd

from ketamine_pmx import checks
from ketamine_pmx.exposure import log_exposure
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import calibration, loo_pit, response_ppc
from ketamine_pmx.response import load_response_idata

sys.stderr = open(snakemake.log[0], "w", buffering=1)

idata = load_response_idata(snakemake.input.posterior)
exposure = log_exposure(pd.read_csv(snakemake.input.exposures), snakemake.params.metric)
groups = checks.response_groups(idata, exposure.set_index("ID")["log_mean"])
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
