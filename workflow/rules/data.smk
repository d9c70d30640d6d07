# Stage 1: the dataset. Simulate the virtual trial (unless a user dataset is configured), then
# validate it into a clean, typed table and a data summary.


rule simulate_trial:
    input:
        parameters=repo_path(config["simulation"]["parameters"]),
    output:
        data=f"{RESULTS}/simulated/trial.csv",
        subjects=f"{RESULTS}/simulated/truth_subjects.csv",
        population=f"{RESULTS}/simulated/truth_population.json",
    log:
        f"{RESULTS}/logs/simulate_trial.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate_trial.tsv"
    threads: rule_resources("simulate_trial").get("threads", 1)
    resources:
        mem_mb=rule_resources("simulate_trial").get("mem_mb", 2000),
        runtime=rule_resources("simulate_trial").get("runtime", 30),
    params:
        config=config_for("simulation", "seeds.simulate", "data"),
    script:
        "../scripts/simulate_trial.py"


rule validate_data:
    input:
        data=get_dataset,
    output:
        clean=f"{RESULTS}/data/clean.csv",
        summary_json=f"{RESULTS}/data/summary.json",
        summary_md=f"{RESULTS}/data/summary.md",
        summary_page=report(
            f"{RESULTS}/data/summary.html",
            caption="../report/data_summary.rst",
            category="1. Data summary",
        ),
        overview=report(
            f"{RESULTS}/data/overview.png",
            caption="../report/data_overview.rst",
            category="1. Data summary",
        ),
    log:
        f"{RESULTS}/logs/validate_data.log",
    threads: rule_resources("validate_data").get("threads", 1)
    resources:
        mem_mb=rule_resources("validate_data").get("mem_mb", 2000),
        runtime=rule_resources("validate_data").get("runtime", 10),
    params:
        config=config_for("data"),
    script:
        "../scripts/validate_data.py"
