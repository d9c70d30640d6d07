"""Glue: rule recommend_doses -> the batches' recommendations gathered in one place."""

import os
import sys

from ketamine_pmx.dosing import merge_batches

sys.stderr = open(snakemake.log[0], "w", buffering=1)

# the gathered files sit beside recommendations.csv (results/dosing/)
out_dir = os.path.dirname(snakemake.output.recommendations)
rec = merge_batches(snakemake.input.batches, out_dir)
print(rec.to_string(), file=sys.stderr)
