"""Glue: rule simulate_trial -> ketamine_pmx.simulate.simulate_trial."""

import sys

from ketamine_pmx.config import validate_config
from ketamine_pmx.simulate import simulate_trial, trial_summary

sys.stderr = open(snakemake.log[0], "w", buffering=1)

config = validate_config(dict(snakemake.params.config), source="snakemake config")
config["simulation"]["parameters"] = snakemake.input.parameters
trial = simulate_trial(config)
trial.write_to(
    data=snakemake.output.data,
    subjects=snakemake.output.subjects,
    population=snakemake.output.population,
)
print(trial_summary(trial), file=sys.stderr)
