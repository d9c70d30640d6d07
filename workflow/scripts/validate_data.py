"""Glue: rule validate_data -> ketamine_pmx.data (clean table + data summary)."""

import sys
from pathlib import Path

from ketamine_pmx.config import validate_config
from ketamine_pmx.data import DataValidationError, load_dataset, write_outputs
from ketamine_pmx.io import write_figure, write_text
from ketamine_pmx.pages import markdown_page
from ketamine_pmx.plots import data_overview

log = open(snakemake.log[0], "w", buffering=1)
sys.stderr = log

config = validate_config(dict(snakemake.params.config), source="snakemake config")
try:
    validated = load_dataset(snakemake.input.data, config["data"])
except DataValidationError as exc:
    # Shown in the log and on the terminal; nothing downstream runs on this dataset.
    print(str(exc), file=log)
    print(str(exc), file=sys.__stderr__)
    sys.exit(1)
for warning in validated.warnings:
    # The job's log and the terminal: a warning is for the user, not only for the record.
    print("warning: " + warning.format(validated.source), file=log)
    print("warning: " + warning.format(validated.source), file=sys.__stderr__)
summary = write_outputs(
    validated,
    snakemake.output.clean,
    snakemake.output.summary_json,
    snakemake.output.summary_md,
)
write_figure(snakemake.output.overview, data_overview(validated.table))
summary_md = Path(snakemake.output.summary_md).read_text(encoding="utf-8")
write_text(snakemake.output.summary_page, markdown_page(summary_md, "Data summary"))
print(
    f"valid: {summary['subjects']} subjects, {summary['observation_rows']} observations", file=log
)
