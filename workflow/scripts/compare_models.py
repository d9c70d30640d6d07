"""Glue: rule compare_models -> ketamine_pmx.comparison (PSIS-LOO tables and figures)."""

import functools
import sys

import pandas as pd

from ketamine_pmx.comparison import compare, pareto_k_table
from ketamine_pmx.data import read_clean
from ketamine_pmx.inference import load_idata
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.outcomes import outcome_table
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import loo_comparison
from ketamine_pmx.response import (
    ResponseFitter,
    load_response_idata,
    load_response_spec,
    loo_refitter,
    prepare_response_data,
)

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
k_cfg = cfg["comparison"]
seed = cfg["seeds"]["fit_response"]


def make_fitter(name):
    data = prepare_response_data(outcomes, specs[name], exposures)
    return ResponseFitter(specs[name], data, dict(snakemake.params.sampler))


# A model is compiled only if one of its patients needs an exact refit, and then once.
fitters = {n: functools.cache(functools.partial(make_fitter, n)) for n in names}
paretos = []
for outcome in ("responder", "pct_change"):
    have = {n: f for n, f in fits.items() if outcome in f.log_likelihood}
    refitters = {n: loo_refitter(fitters[n], seed, outcome) for n in have}
    table, loos = compare(have, outcome, refitters, k_cfg["k_threshold"], k_cfg["max_refits"])
    write_csv(snakemake.output[outcome], table, float_format="%.6g")
    title = f"PSIS-LOO comparison of the response models: {outcome.replace('_', ' ')}"
    write_text(snakemake.output[f"{outcome}_page"], table_page(table, title))
    write_figure(snakemake.output[f"figure_{outcome}"], loo_comparison(table))
    ids = {n: f.log_likelihood["patient"].to_numpy() for n, f in have.items()}
    paretos.append(pareto_k_table(loos, ids).assign(outcome=outcome))
    print(table.to_string(), file=sys.stderr)

pk_fits = {p.split("/")[-2]: load_idata(p) for p in snakemake.input.pk}
table, loos = compare(pk_fits, "y", None, k_cfg["k_threshold"], 0)
write_csv(snakemake.output.pk, table, float_format="%.6g")
write_text(snakemake.output.pk_page, table_page(table, "PSIS-LOO comparison of the PK models"))
write_figure(snakemake.output.figure_pk, loo_comparison(table))
paretos.append(pareto_k_table(loos, {}).assign(outcome="concentration"))
write_csv(snakemake.output.pareto_k, pd.concat(paretos, ignore_index=True))
print(table.to_string(), file=sys.stderr)
