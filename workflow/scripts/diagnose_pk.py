"""Glue: rule diagnose_pk -> diagnostics table and the diagnostic gate."""

import sys

from ketamine_pmx.inference import diagnose, gate_allows, gate_message, load_idata

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

idata = load_idata(snakemake.input.posterior)
failures = diagnose(idata, snakemake.params.gate, snakemake.output.table, snakemake.output.gate)
model = idata.posterior.attrs.get("model")
if failures:
    message = gate_message(model, failures)
    print(message, file=log)
    if not gate_allows(snakemake.params.gate, model):
        print(
            message
            + "\n(set gate.allow_failure: true, or list the model in gate.allow_failure_for, to continue)",
            file=sys.__stderr__,
        )
        sys.exit(1)
else:
    print(f"diagnostic gate passed for {model}", file=log)
