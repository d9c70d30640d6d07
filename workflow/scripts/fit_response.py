"""Glue: rule fit_response -> ketamine_pmx.response (posterior, diagnostics, gate).

The diagnostics and gate.json are written whatever the gate says: rule gate_response enforces
it, so a failed gate keeps them."""

import sys

import pandas as pd

from ketamine_pmx.checks import diagnose, gate_message
from ketamine_pmx.data import outcome_table, read_clean
from ketamine_pmx.inference import fit_response, run_timings, save_idata
from ketamine_pmx.models import load_response_spec

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

cfg = snakemake.params.config
spec = load_response_spec(snakemake.input.spec)
outcomes = outcome_table(read_clean(snakemake.input.data), cfg["response"])
for pid, reason in outcomes.excluded.itertuples(index=False):
    print(f"patient {pid} excluded: {reason}", file=log)
exposures = pd.read_csv(snakemake.input.exposures)
idata, data = fit_response(
    outcomes.table, spec, exposures, dict(snakemake.params.sampler), cfg["seeds"]["fit_response"]
)
for pid, reason in data.excluded.itertuples(index=False):
    print(f"patient {pid} excluded: {reason}", file=log)
print(f"timings (s): {run_timings(idata)}", file=sys.stderr)
save_idata(idata, snakemake.output.posterior)
failures = diagnose(idata, cfg["gate"], snakemake.output.diagnostics, snakemake.output.gate)
print(f"{spec.name}: {len(data.table)} patients", file=log)
print(gate_message(spec.name, failures) if failures else "diagnostic gate passed", file=log)
