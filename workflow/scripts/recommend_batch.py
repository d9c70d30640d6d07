"""Glue: rule recommend_batch -> dose recommendations for one batch of the patients file, with
the file's warnings (also in the log) and the reference models' gate status. File names and
whether figures are drawn are decided on the whole file, so the batches gather without clashes."""

import sys

from ketamine_pmx.data import DataValidationError, load_concentrations, read_patients
from ketamine_pmx.dosing import (
    FIGURES_AUTO_MAX,
    Caveats,
    gate_failures,
    load_models,
    patient_batch,
    patient_file_names,
    recommend,
    write_recommendation,
)
from ketamine_pmx.plots import dose_recommendation

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
models = load_models(
    snakemake.input.pk_spec,
    snakemake.input.pk,
    snakemake.input.response_spec,
    snakemake.input.response,
    cfg["response"]["endpoints"],
)
try:
    patients, warnings = read_patients(
        snakemake.input.patients,
        models.needed_covariates(),
        models.indications,
        cfg["dosing"],
        cfg["data"],
    )
    conc = None
    if snakemake.input.concentrations:
        conc = load_concentrations(snakemake.input.concentrations, patients, cfg["data"])
except DataValidationError as exc:  # the message names the file, line, column and rule
    print(exc, file=sys.stderr)
    print(exc, file=sys.__stderr__)
    sys.exit(1)
gates = gate_failures(
    {
        models.pk_spec.name: snakemake.input.pk_gate,
        models.resp_spec.name: snakemake.input.response_gate,
    }
)
caveats = Caveats.from_warnings(warnings, patients, snakemake.input.patients, gates)
for line in caveats.messages():
    print(line, file=sys.stderr)
batch = int(snakemake.wildcards.batch)
sub = patient_batch(patients, batch, cfg["dosing"]["batches"])
if conc is not None:
    conc = conc[conc["ID"].astype(str).isin(set(sub["ID"]))]
# One seed for every batch (as the CLI): a patient's plan must not depend on the batch split.
result = recommend(models, sub, cfg["dosing"], cfg["seeds"]["dosing"], conc)
write_recommendation(
    result,
    snakemake.output.batch,
    cfg["dosing"],
    caveats,
    names=patient_file_names(patients["ID"]),
    figures=len(patients) <= FIGURES_AUTO_MAX,
    draw=dose_recommendation,
)
print(result.recommendations.to_string(), file=sys.stderr)
for note in result.notes:
    print(note, file=sys.stderr)
