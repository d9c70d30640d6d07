# Stage 3: exposure -> response. Per-patient exposure draws from the reference PK model, the
# exposure-biomarker-response models, their PSIS-LOO comparison (and the PK models'), and the
# headline table of biomarker effects. Each response model's gate is enforced as the PK models'
# (gate_response, on the kept diagnostics.csv and gate.json of fit_response).


rule exposures:
    input:
        unpack(get_reference_pk),
        data=rules.validate_data.output.clean,
    output:
        draws=result_path("exposures", "draws"),
        summary=result_path("exposures", "summary"),
        summary_page=report(
            result_path("exposures", "summary_page"),
            caption="../report/exposure_summary.rst",
            category="3. Exposures",
        ),
        figure=report(
            result_path("exposures", "figure"),
            caption="../report/exposure_plot.rst",
            category="3. Exposures",
        ),
    log:
        f"{RESULTS}/logs/exposures.log",
    benchmark:
        f"{RESULTS}/benchmarks/exposures.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=config_for("response", "exposures"),
    script:
        "../scripts/exposures.py"


rule fit_response:
    input:
        data=rules.validate_data.output.clean,
        exposures=rules.exposures.output.summary,
        spec=get_response_spec,
    output:
        posterior=result_path("fit_response", "posterior"),
        diagnostics=result_path("fit_response", "diagnostics"),
        gate=result_path("fit_response", "gate"),
    log:
        f"{RESULTS}/logs/fit_response/{{resp_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_response/{{resp_model}}.tsv"
    threads: config["sampler"]["cores"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config={**config_for("response", "seeds.fit_response"), "gate": GATE_THRESHOLDS},
        sampler=sampler_settings(config, "response"),
    script:
        "../scripts/fit_response.py"


rule gate_response:
    input:
        table=rules.fit_response.output.diagnostics,
        gate=rules.fit_response.output.gate,
    output:
        check=result_path("gate_response", "check"),
        page=report(
            result_path("gate_response", "page"),
            caption="../report/response_diagnostics.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
    log:
        f"{RESULTS}/logs/gate_response/{{resp_model}}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        gate=config["gate"],
    script:
        "../scripts/enforce_gate.py"


rule compare_models:
    input:
        data=rules.validate_data.output.clean,
        exposures=rules.exposures.output.summary,
        response=expand(
            rules.fit_response.output.posterior,
            resp_model=config["models"]["response"],
        ),
        response_specs=[get_response_spec(m) for m in config["models"]["response"]],
        pk=expand(rules.fit_pk.output.posterior, pk_model=config["models"]["pk"]),
    output:
        responder=result_path("compare_models", "response", outcome="responder"),
        responder_page=report(
            result_path("compare_models", "response_page", outcome="responder"),
            caption="../report/compare_table.rst",
            category="4. Model comparison",
        ),
        pct_change=result_path("compare_models", "response", outcome="pct_change"),
        pct_change_page=report(
            result_path("compare_models", "response_page", outcome="pct_change"),
            caption="../report/compare_table.rst",
            category="4. Model comparison",
        ),
        pk=result_path("compare_models", "pk"),
        pk_page=report(
            result_path("compare_models", "pk_page"),
            caption="../report/compare_pk.rst",
            category="4. Model comparison",
        ),
        pareto_k=result_path("compare_models", "pareto_k"),
        figure_responder=report(
            result_path("compare_models", "figure_response", outcome="responder"),
            caption="../report/compare_plot.rst",
            category="4. Model comparison",
        ),
        figure_pct_change=report(
            result_path("compare_models", "figure_response", outcome="pct_change"),
            caption="../report/compare_plot.rst",
            category="4. Model comparison",
        ),
        figure_pk=report(
            result_path("compare_models", "figure_pk"),
            caption="../report/compare_plot.rst",
            category="4. Model comparison",
        ),
    log:
        f"{RESULTS}/logs/compare_models.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare_models.tsv"
    threads: config["sampler"]["cores"]
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=config_for("response", "seeds.fit_response", "comparison", "models"),
        sampler=sampler_settings(config, "response"),
    script:
        "../scripts/compare_models.py"


rule biomarker_effects:
    input:
        response=expand(
            rules.fit_response.output.posterior,
            resp_model=config["models"]["response"],
        ),
        response_specs=[get_response_spec(m) for m in config["models"]["response"]],
        truth=get_truth_population,
        truth_subjects=get_truth_subjects,
    output:
        table=result_path("biomarker_effects", "table"),
        table_page=report(
            result_path("biomarker_effects", "table_page"),
            caption="../report/biomarker_effects.rst",
            category="5. Biomarker effects",
        ),
        forest_responder=report(
            result_path("biomarker_effects", "forest", outcome="responder"),
            caption="../report/forest.rst",
            category="5. Biomarker effects",
        ),
        forest_pct_change=report(
            result_path("biomarker_effects", "forest", outcome="pct_change"),
            caption="../report/forest.rst",
            category="5. Biomarker effects",
        ),
        recovery=result_path("biomarker_effects", "recovery"),
        recovery_page=report(
            result_path("biomarker_effects", "recovery_page"),
            caption="../report/recovery.rst",
            category="5. Biomarker effects",
        ),
    log:
        f"{RESULTS}/logs/biomarker_effects.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        models=config["models"]["response"],
    script:
        "../scripts/biomarker_effects.py"
