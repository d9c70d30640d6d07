# Stage 5: individualised dosing. Recommendations for the patients file (scattered in batches
# for cluster runs, then gathered), and the virtual trial of model-guided dosing. The reference
# fits' gate checks are inputs (get_reference_fits): a model the config let past a failed gate
# is named in recommendations.csv (GATE), summary.md and each patient's summary.


rule recommend_batch:
    input:
        unpack(get_reference_fits),
        patients=repo_path(config["dosing"]["patients"]),
        concentrations=get_concentrations,
    output:
        batch=temp(directory(result_path("recommend_batch", "batch"))),
    log:
        f"{RESULTS}/logs/dosing/batch_{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dosing/batch_{{batch}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=config_for("dosing", "response", "data", "seeds"),
    script:
        "../scripts/recommend_batch.py"


rule recommend_doses:
    input:
        batches=expand(
            rules.recommend_batch.output.batch,
            batch=range(config["dosing"]["batches"]),
        ),
    output:
        recommendations=result_path("recommend_doses", "recommendations"),
        regimens=result_path("recommend_doses", "regimens"),
        summary=result_path("recommend_doses", "summary"),
        notes=result_path("recommend_doses", "notes"),
        patients=report(
            directory(result_path("recommend_doses", "patients")),
            patterns=["{name}.png"],
            caption="../report/dose_curves.rst",
            category="7. Dosing",
            subcategory="patients",
        ),
    log:
        f"{RESULTS}/logs/dosing/recommend_doses.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/recommend_doses.py"


rule dosing_trial:
    input:
        unpack(get_reference_fits),
        truth=rules.simulate_trial.output.population,
    output:
        patients=result_path("dosing_trial", "patients"),
        summary=result_path("dosing_trial", "summary"),
        figure=report(
            result_path("dosing_trial", "figure"),
            caption="../report/dosing_trial.rst",
            category="7. Dosing",
        ),
    log:
        f"{RESULTS}/logs/dosing/dosing_trial.log",
    benchmark:
        f"{RESULTS}/benchmarks/dosing/dosing_trial.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=config_for("dosing", "response", "data", "seeds", "simulation"),
    script:
        "../scripts/dosing_trial.py"
