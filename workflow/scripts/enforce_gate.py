"""Glue: rules gate_pk and gate_response -> the diagnostic gate enforced on a model's kept
diagnostics.csv and gate.json: the gate check the later stages require and the report's
diagnostics page (with the gate's result), or a stop with the message naming those files."""

import json
import sys

import pandas as pd

from ketamine_pmx.checks import GateError, enforce_gate
from ketamine_pmx.io import write_json, write_text
from ketamine_pmx.pages import csv_page, gate_notice, notice, table_html

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

model = snakemake.wildcards[0]  # the rule's one wildcard: the model's name
try:
    check = enforce_gate(model, snakemake.input.gate, snakemake.input.table, snakemake.params.gate)
except GateError as exc:  # the log and the terminal: the run stops here
    print(exc, file=log)
    print(exc, file=sys.__stderr__)
    sys.exit(1)
write_json(snakemake.output.check, check)
# The other lists of gate.json (e.g. flags, advice): a box each when not empty; scalars: a table.
with open(snakemake.input.gate, encoding="utf-8") as fh:
    gate = json.load(fh)
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
