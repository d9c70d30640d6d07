"""Glue: rule compare_models -> ketamine_pmx.checks (PSIS-LOO tables and figures)."""

import sys

import pandas as pd

from ketamine_pmx.checks import compare_pk_models, compare_response_models
from ketamine_pmx.data import outcome_table, read_clean
from ketamine_pmx.inference import load_idata, load_response_idata
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.models import load_response_spec
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import loo_comparison

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
outcomes = outcome_table(read_clean(snakemake.input.data), cfg["response"]).table
exposures = pd.read_csv(snakemake.input.exposures)
names = cfg["models"]["response"]
specs = {
    n: load_response_spec(p) for n, p in zip(names, snakemake.input.response_specs, strict=True)
}
fits = {
    n: load_response_idata(p, specs[n])
    for n, p in zip(names, snakemake.input.response, strict=True)
}
tables, paretos = compare_response_models(
    fits,
    specs,
    outcomes,
    exposures,
    sampler=dict(snakemake.params.sampler),
    seed=cfg["seeds"]["fit_response"],
    comparison=cfg["comparison"],
)
for outcome, table in tables.items():
    write_csv(snakemake.output[outcome], table, float_format="%.6g")
    title = f"PSIS-LOO comparison of the response models: {outcome.replace('_', ' ')}"
    write_text(snakemake.output[f"{outcome}_page"], table_page(table, title))
    write_figure(snakemake.output[f"figure_{outcome}"], loo_comparison(table))
    print(table.to_string(), file=sys.stderr)

pk_fits = {n: load_idata(p) for n, p in zip(cfg["models"]["pk"], snakemake.input.pk, strict=True)}
table, pk_paretos = compare_pk_models(pk_fits, cfg["comparison"])
write_csv(snakemake.output.pk, table, float_format="%.6g")
write_text(snakemake.output.pk_page, table_page(table, "PSIS-LOO comparison of the PK models"))
write_figure(snakemake.output.figure_pk, loo_comparison(table))
write_csv(snakemake.output.pareto_k, pd.concat([paretos, pk_paretos], ignore_index=True))
print(table.to_string(), file=sys.stderr)
