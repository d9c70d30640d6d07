"""Glue: rule dosing_trial -> model-guided vs standard dosing of new simulated patients (and
the same patients guided by the simulator's own truth), scored on the simulator's true
response probability and safety-limit exceedance."""

import json
import sys

from ketamine_pmx.dosing import load_models, trial_with_true_model
from ketamine_pmx.io import write_csv, write_figure
from ketamine_pmx.plots import dosing_trial

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
models = load_models(
    snakemake.input.pk_spec,
    snakemake.input.pk,
    snakemake.input.response_spec,
    snakemake.input.response,
    cfg["response"]["endpoints"],
)
with open(snakemake.input.truth, encoding="utf-8") as fh:
    population = json.load(fh)
patients, summary, skipped = trial_with_true_model(
    cfg, models, cfg["seeds"]["dosing_trial"], population
)
if skipped:
    print(skipped, file=sys.stderr)
write_csv(snakemake.output.patients, patients)
write_csv(snakemake.output.summary, summary, float_format="%.4g")
write_figure(snakemake.output.figure, dosing_trial(summary))
print(summary.to_string(), file=sys.stderr)
