"""Glue: rule fit_response -> ketamine_pmx.response (posterior, diagnostics, gate)."""

import sys

import pandas as pd

from ketamine_pmx.data import read_clean
from ketamine_pmx.inference import (
    diagnostics_table,
    gate,
    run_statistics,
    save_idata,
    write_diagnostics,
)
from ketamine_pmx.outcomes import outcome_table
from ketamine_pmx.response import fit_response, load_response_spec

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

cfg = snakemake.params.config
spec = load_response_spec(snakemake.input.spec)
outcomes = outcome_table(read_clean(snakemake.input.data), cfg["response"])
for pid, reason in outcomes.excluded.itertuples(index=False):
    print(f"patient {pid} excluded: {reason}", file=log)
exposures = pd.read_csv(snakemake.input.exposures)
idata, data = fit_response(
    outcomes.table, spec, exposures, cfg["sampler"], cfg["seeds"]["fit_response"]
)
for pid, reason in data.excluded.itertuples(index=False):
    print(f"patient {pid} excluded: {reason}", file=log)
save_idata(idata, snakemake.output.posterior)
table = diagnostics_table(idata)
stats = run_statistics(idata)
failures = gate(table, stats, cfg["gate"])
write_diagnostics(table, stats, failures, snakemake.output.diagnostics, snakemake.output.gate)
print(f"{spec.name}: {len(data.table)} patients", file=log)
if failures:
    message = f"diagnostic gate FAILED for {spec.name}:\n  - " + "\n  - ".join(failures)
    print(message, file=log)
    if not cfg["gate"]["allow_failure"]:
        print(message + "\n(set gate.allow_failure: true to continue anyway)", file=sys.__stderr__)
        sys.exit(1)
