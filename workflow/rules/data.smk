# Stage 1: the dataset. Simulate the virtual trial (unless a user dataset is configured), then
# validate it into a clean, typed table and a data summary.


rule simulate_trial:
    input:
        parameters=repo_path(config["simulation"]["parameters"]),
    output:
        data=result_path("simulate_trial", "data"),
        subjects=result_path("simulate_trial", "subjects"),
        population=result_path("simulate_trial", "population"),
    log:
        f"{RESULTS}/logs/simulate_trial.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate_trial.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        config=config_for("simulation", "seeds.simulate", "data"),
    script:
        "../scripts/simulate_trial.py"


rule validate_data:
    input:
        data=get_dataset,
    output:
        clean=result_path("validate_data", "clean"),
        summary_json=result_path("validate_data", "summary_json"),
        summary_md=result_path("validate_data", "summary_md"),
        summary_page=report(
            result_path("validate_data", "summary_page"),
            caption="../report/data_summary.rst",
            category="1. Data summary",
        ),
        overview=report(
            result_path("validate_data", "overview"),
            caption="../report/data_overview.rst",
            category="1. Data summary",
        ),
    log:
        f"{RESULTS}/logs/validate_data.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=config_for("data"),
    script:
        "../scripts/validate_data.py"
