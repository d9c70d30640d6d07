"""Glue: rule diagnose_pk -> diagnostics table and the diagnostic gate."""

import sys

from ketamine_pmx.inference import (
    diagnostics_table,
    gate,
    load_idata,
    run_statistics,
    write_diagnostics,
)

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

idata = load_idata(snakemake.input.posterior)
table = diagnostics_table(idata)
stats = run_statistics(idata)
failures = gate(table, stats, snakemake.params.gate)
write_diagnostics(table, stats, failures, snakemake.output.table, snakemake.output.gate)
model = idata.posterior.attrs.get("model")
if failures:
    message = f"diagnostic gate FAILED for {model}:\n  - " + "\n  - ".join(failures)
    print(message, file=log)
    if not snakemake.params.gate["allow_failure"]:
        print(message + "\n(set gate.allow_failure: true to continue anyway)", file=sys.__stderr__)
        sys.exit(1)
else:
    print(f"diagnostic gate passed for {model}", file=log)
