"""Glue: rules dosing_pages and trial_page -> an HTML page of each table (CSV or Markdown) for
the report, each output from the input of the same name, after the gate results of the
reference models (input ``gates``, their gate checks)."""

import json
import sys
from pathlib import Path

from ketamine_pmx.io import write_text
from ketamine_pmx.pages import csv_page, gate_notice, markdown_page

sys.stderr = open(snakemake.log[0], "w", buffering=1)

gates = []
for path in snakemake.input.gates:
    with open(path, encoding="utf-8") as fh:
        gates.append(json.load(fh))
intro = "".join(gate_notice(g) for g in gates)
for name, title in snakemake.params.titles.items():
    source = Path(snakemake.input[name])
    if source.suffix == ".md":
        html = markdown_page(source.read_text(encoding="utf-8"), title, intro)
    else:
        html = csv_page(source, title, intro)
    write_text(snakemake.output[name], html)
    print(f"{source} -> {snakemake.output[name]}", file=sys.stderr)
