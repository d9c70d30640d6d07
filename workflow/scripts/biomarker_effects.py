"""Glue: rule biomarker_effects -> the effects table, forest plots and (simulated data) recovery."""

import json
import sys

import pandas as pd

from ketamine_pmx.checks import effects_vs_truth
from ketamine_pmx.inference import load_response_idata
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.models import load_response_spec
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import effects_forest
from ketamine_pmx.response import effects_table

sys.stderr = open(snakemake.log[0], "w", buffering=1)

names = snakemake.params.models
specs = [load_response_spec(p) for p in snakemake.input.response_specs]
fits = [load_response_idata(p, s) for p, s in zip(snakemake.input.response, specs, strict=True)]
table = pd.concat(
    [effects_table(f, s) for f, s in zip(fits, specs, strict=True)], ignore_index=True
)
write_csv(snakemake.output.table, table, float_format="%.4g")
write_text(snakemake.output.table_page, table_page(table, "Biomarker effects per clinical unit"))
reference = table[table["model"] == names[0]]
for outcome in ("responder", "pct_change"):
    write_figure(snakemake.output[f"forest_{outcome}"], effects_forest(reference, outcome))
recovery = pd.DataFrame(columns=["model", "parameter", "truth", "mean", "q5", "q95", "inside"])
if snakemake.input.truth:
    with open(snakemake.input.truth, encoding="utf-8") as fh:
        truth = json.load(fh)
    subjects = pd.read_csv(snakemake.input.truth_subjects)
    recovery = pd.concat(
        [
            effects_vs_truth(f, s, truth, subjects=subjects).assign(model=s.name)
            for f, s in zip(fits, specs, strict=True)
        ],
        ignore_index=True,
    )
    recovery = recovery[["model", *[c for c in recovery.columns if c != "model"]]]
write_csv(snakemake.output.recovery, recovery, float_format="%.4g")
title = "Recovery of the simulator's true effects"
note = "" if snakemake.input.truth else "<p>A user's dataset: no known truth to compare with.</p>"
write_text(snakemake.output.recovery_page, table_page(recovery, title, note))
print(reference.to_string(), file=sys.stderr)
print(recovery.to_string(), file=sys.stderr)
