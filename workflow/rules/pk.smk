# Stage 2: population PK. Fit each configured model, diagnose it (diagnostics.csv and gate.json,
# written whatever the gate says, so a failed gate keeps them), then gate the run on the
# diagnostics (R-hat, ESS, divergences, E-BFMI): gate_pk stops the run unless the config allows
# the failure, and writes the gate check the later stages require and the report's page.


rule fit_pk:
    input:
        data=rules.validate_data.output.clean,
        spec=get_pk_spec,
    output:
        posterior=result_path("fit_pk", "posterior"),
    log:
        f"{RESULTS}/logs/fit_pk/{{pk_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_pk/{{pk_model}}.tsv"
    threads: config["sampler"]["cores"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        sampler=sampler_settings(config, "pk"),
        seed=config["seeds"]["fit_pk"],
    script:
        "../scripts/fit_pk.py"


rule diagnose_pk:
    input:
        posterior=rules.fit_pk.output.posterior,
    output:
        table=result_path("diagnose_pk", "table"),
        gate=result_path("diagnose_pk", "gate"),
    log:
        f"{RESULTS}/logs/diagnose_pk/{{pk_model}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        gate=GATE_THRESHOLDS,
    script:
        "../scripts/diagnose_pk.py"


rule gate_pk:
    input:
        table=rules.diagnose_pk.output.table,
        gate=rules.diagnose_pk.output.gate,
    output:
        check=result_path("gate_pk", "check"),
        page=report(
            result_path("gate_pk", "page"),
            caption="../report/pk_diagnostics.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
    log:
        f"{RESULTS}/logs/gate_pk/{{pk_model}}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        gate=config["gate"],
    script:
        "../scripts/enforce_gate.py"
