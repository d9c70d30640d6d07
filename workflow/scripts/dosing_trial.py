"""Glue: rule dosing_trial -> model-guided vs standard dosing of new simulated patients,
scored on the simulator's true response probability and safety-limit exceedance."""

import json
import sys

import pandas as pd

from ketamine_pmx.dosing import load_models, make_models, virtual_trial
from ketamine_pmx.io import write_csv, write_figure
from ketamine_pmx.oracle import oracle_pk_posterior, oracle_response
from ketamine_pmx.plots import dosing_trial

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
endpoints = cfg["response"]["endpoints"]
models = load_models(
    snakemake.input.pk_spec,
    snakemake.input.pk,
    snakemake.input.response_spec,
    snakemake.input.response,
    endpoints,
)
seed = cfg["seeds"]["dosing_trial"]
with open(snakemake.input.truth, encoding="utf-8") as fh:
    population = json.load(fh)
per_patient, summary, _ = virtual_trial(cfg, models, seed, population)
per_patient = per_patient.assign(MODELS="fitted")
tables, summaries = [per_patient], [summary]
# The same patients dosed with the simulator's own truth as the models: what guidance
# achieves when the model is exactly right (the bound the fitted models are measured against).
try:
    draws = cfg["dosing"]["pk_draws"]
    oracle = make_models(
        models.pk_spec,
        oracle_pk_posterior(population, models.pk_spec, draws),
        models.resp_spec,
        *oracle_response(population, models.resp_spec, draws),
        endpoints,
    )
except ValueError as exc:  # a reference model the oracle cannot express
    print(f"no true-model arm: {exc}", file=sys.stderr)
else:
    per_oracle, summary_oracle, _ = virtual_trial(cfg, oracle, seed, population)
    label = "guided (true model)"
    keep = per_oracle["STRATEGY"] == "guided"
    tables.append(per_oracle[keep].assign(MODELS="oracle", STRATEGY=label))
    summaries.append(summary_oracle[summary_oracle["STRATEGY"] == "guided"].assign(STRATEGY=label))
both = pd.concat(summaries, ignore_index=True)
write_csv(snakemake.output.patients, pd.concat(tables, ignore_index=True))
write_csv(snakemake.output.summary, both, float_format="%.4g")
write_figure(snakemake.output.figure, dosing_trial(both))
print(both.to_string(), file=sys.stderr)
