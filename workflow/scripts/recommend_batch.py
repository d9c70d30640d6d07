"""Glue: rule recommend_batch -> dose recommendations for one batch of the patients file."""

import sys

import numpy as np

from ketamine_pmx.dosing import (
    load_concentrations,
    load_models,
    load_patients,
    patient_batch,
    recommend,
    write_recommendation,
)

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
models = load_models(
    snakemake.input.pk_spec,
    snakemake.input.pk,
    snakemake.input.response_spec,
    snakemake.input.response,
    cfg["response"]["endpoints"],
)
patients = load_patients(snakemake.input.patients, models, cfg["dosing"], cfg["data"])
conc = None
if snakemake.input.concentrations:
    conc = load_concentrations(snakemake.input.concentrations, patients, cfg["data"])
batch = int(snakemake.wildcards.batch)
sub = patient_batch(patients, batch, cfg["dosing"]["batches"])
if conc is not None:
    conc = conc[conc["ID"].astype(str).isin(set(sub["ID"]))]
seed = int(np.random.SeedSequence([cfg["seeds"]["dosing"], batch]).generate_state(1)[0])
result = recommend(models, sub, cfg["dosing"], seed, conc)
write_recommendation(result, snakemake.output[0], cfg["dosing"])
print(result.recommendations.to_string(), file=sys.stderr)
for note in result.notes:
    print(note, file=sys.stderr)
