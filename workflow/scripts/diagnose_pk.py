"""Glue: rule diagnose_pk -> diagnostics table and the diagnostic gate's result (gate.json).

Written whatever the gate says: rule gate_pk enforces it, so a failed gate keeps these files."""

import sys

from ketamine_pmx.checks import diagnose, gate_message, gate_notes
from ketamine_pmx.inference import load_idata

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

idata = load_idata(snakemake.input.posterior)
failures = diagnose(idata, snakemake.params.gate, snakemake.output.table, snakemake.output.gate)
model = idata.posterior.attrs.get("model")
notes = gate_notes(snakemake.output.gate)  # flags and proposals (gate.json)
if failures:
    print(gate_message(model, failures, notes), file=log)
else:
    print("\n  ".join([f"diagnostic gate passed for {model}", *notes]), file=log)
