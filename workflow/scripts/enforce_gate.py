"""Glue: rules gate_pk and gate_response -> the diagnostic gate enforced on a model's kept
diagnostics.csv and gate.json: the gate check the later stages require and the report's
diagnostics page (with the gate's result), or a stop with the message naming those files."""

import json
import sys

import pandas as pd

from ketamine_pmx.inference import gate_allows, gate_message, gate_notes
from ketamine_pmx.io import write_json, write_text
from ketamine_pmx.pages import csv_page, gate_notice, notice, table_html

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

rules = snakemake.params.gate
model = snakemake.wildcards[0]  # the rule's one wildcard: the model's name
with open(snakemake.input.gate, encoding="utf-8") as fh:
    gate = json.load(fh)
failures = list(gate["gate_failures"])
passed = not failures
if not passed and not gate_allows(rules, model):
    message = (
        gate_message(model, failures, gate_notes(gate))
        + f"\nDiagnostics kept in {snakemake.input.table} and {snakemake.input.gate}."
        + "\n(set gate.allow_failure: true, or list the model in gate.allow_failure_for, to continue)"
    )
    print(message, file=log)
    print(message, file=sys.__stderr__)
    sys.exit(1)
check = {
    "model": model,
    "gate_passed": passed,
    "allowed_past_failed_gate": not passed,
    "allowed_by": None
    if passed
    else ("gate.allow_failure" if rules["allow_failure"] else "gate.allow_failure_for"),
    "gate_failures": failures,
}
write_json(snakemake.output.check, check)
# The other lists of gate.json (e.g. flags, advice): a box each when not empty; scalars: a table.
extra = {k: v for k, v in gate.items() if k not in ("gate_passed", "gate_failures")}
lists = {k: v for k, v in extra.items() if isinstance(v, list)}
notes = "".join(notice("note", f"{k}:", [str(i) for i in v]) for k, v in lists.items() if v)
scalars = [(k, v) for k, v in extra.items() if not isinstance(v, list | dict)]
stats = pd.DataFrame(
    [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in scalars],
    columns=["run statistic", "value"],
)
intro = gate_notice(check) + notes + table_html(stats)
write_text(snakemake.output.page, csv_page(snakemake.input.table, f"Diagnostics: {model}", intro))
print(json.dumps(check), file=log)
