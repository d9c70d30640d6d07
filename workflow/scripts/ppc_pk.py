"""Glue: rule ppc_pk -> ketamine_pmx.checks (VPC, pcVPC, GOF, random effects)."""

import sys

import pandas as pd

from ketamine_pmx import checks
from ketamine_pmx.data import read_clean, subject_strata
from ketamine_pmx.inference import load_idata
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.models import load_pk_spec, prepare_pk_data
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import eta_covariates, gof, vpc

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
ck = cfg["checks"]
spec = load_pk_spec(snakemake.input.spec)
idata = load_idata(snakemake.input.posterior, spec)
table = read_clean(snakemake.input.data)
data = prepare_pk_data(table, spec)
strata = subject_strata(table)
reps = checks.simulate_replicates(spec, idata, data, ck["replicates"], cfg["seeds"]["ppc"])
tables = [
    checks.vpc_table(data, reps, strata, pc, ck["bin_gap"], ck["min_bin_obs"])
    for pc in (False, True)
]
vpcs = pd.concat(tables, ignore_index=True)
write_csv(snakemake.output.vpc_table, vpcs, float_format="%.6g")
summary = checks.vpc_summary(vpcs)
write_csv(snakemake.output.vpc_summary, summary, float_format="%.4g")
write_text(snakemake.output.vpc_summary_page, table_page(summary, f"VPC summary: {spec.name}"))
points = data.obs.assign(stratum=data.obs["ID"].map(strata).astype(str))
write_figure(snakemake.output.vpc, vpc(tables[0], points))
write_figure(snakemake.output.pcvpc, vpc(tables[1]))
gof_table = checks.gof_table(data, reps, cfg["seeds"]["ppc"])
write_csv(snakemake.output.gof_table, gof_table, float_format="%.6g")
gof_summary = checks.gof_summary(gof_table)
write_csv(snakemake.output.gof_summary, gof_summary, float_format="%.4g")
write_text(
    snakemake.output.gof_summary_page, table_page(gof_summary, f"Goodness of fit: {spec.name}")
)
write_figure(snakemake.output.gof, gof(gof_table))
etas = checks.eta_table(idata)
eta_summary = checks.eta_covariate_summary(etas, idata)
write_csv(snakemake.output.eta_summary, eta_summary, float_format="%.4g")
write_text(
    snakemake.output.eta_summary_page,
    table_page(eta_summary, f"Random effects against covariates: {spec.name}"),
)
write_figure(snakemake.output.etas, eta_covariates(etas))
print(summary.to_string(), file=sys.stderr)
