"""Glue: rule simulate_trial -> ketamine_pmx.simulate.simulate_trial."""

import sys

from ketamine_pmx.config import validate_config
from ketamine_pmx.simulate import simulate_trial, trial_summary

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821, SIM115

config = validate_config(dict(snakemake.params.config), source="snakemake config")  # noqa: F821
config["simulation"]["parameters"] = snakemake.input.parameters  # noqa: F821
trial = simulate_trial(config)
trial.write_to(
    data=snakemake.output.data,  # noqa: F821
    subjects=snakemake.output.subjects,  # noqa: F821
    population=snakemake.output.population,  # noqa: F821
)
print(trial_summary(trial), file=sys.stderr)
