"""Glue: rule recommend_doses -> the batches' recommendations gathered in one place."""

import sys

from ketamine_pmx.dosing import merge_batches

sys.stderr = open(snakemake.log[0], "w", buffering=1)

rec = merge_batches(snakemake.input.batches, snakemake.params.out_dir)
print(rec.to_string(), file=sys.stderr)
