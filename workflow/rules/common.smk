# Input logic shared by all stages: config validation, paths, resources, input functions.
import os

from snakemake.utils import validate

from ketamine_pmx.config import ConfigError, check_results_dir, sampler_settings

validate(config, schema="../schemas/config.schema.yaml")
try:  # before any job: a results_dir that would write over the project's inputs
    check_results_dir(
        config,
        " + ".join(map(str, workflow.configfiles)) or "config",
        roots=(workflow.basedir,),
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = config["results_dir"]


def repo_path(path):
    """A config path as given if it exists from the working directory, else from the workflow."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


def rule_resources(name):
    """threads, mem_mb and runtime of a rule, from config resources."""
    return config["resources"].get(name, {})


def config_for(*sections):
    """The config sections a rule depends on, its params (changing others must not rerun it)."""
    subset = {key: config[key] for key in sections if "." not in key}
    for key in sections:
        if "." in key:
            head, tail = key.split(".", 1)
            subset.setdefault(head, {})[tail] = config[head][tail]
    return subset


def get_dataset(wildcards):
    """The dataset validate_data reads: the user's file, or the simulated virtual trial."""
    if config["data"]["path"]:
        return repo_path(config["data"]["path"])
    return rules.simulate_trial.output.data


def get_final_outputs():
    return [
        rules.validate_data.output.clean,
        rules.validate_data.output.summary_json,
        rules.validate_data.output.summary_md,
        rules.validate_data.output.overview,
        *get_pk_outputs(),
        *expand(rules.ppc_pk.output, pk_model=config["models"]["pk"]),
        *get_response_outputs(),
        *get_dosing_outputs(),
    ]


wildcard_constraints:
    pk_model="|".join(config["models"]["pk"]),
    resp_model="|".join(config["models"]["response"]),
    batch=r"\d+",


REFERENCE_PK = config["models"]["pk"][0]


def get_pk_spec(wildcards):
    """The specification file of a PK model."""
    return repo_path(
        os.path.join(config["models"]["dir"], f"{wildcards.pk_model}.yaml")
    )


def get_pk_outputs():
    """Posterior, diagnostics, gate and enforced gate (with its report page) of every PK model."""
    return expand(
        [
            rules.fit_pk.output.posterior,
            rules.diagnose_pk.output.table,
            rules.diagnose_pk.output.gate,
            *rules.gate_pk.output,
        ],
        pk_model=config["models"]["pk"],
    )


def get_response_spec(wildcards_or_name):
    """The specification file of a response model (wildcards or a model name)."""
    name = getattr(wildcards_or_name, "resp_model", wildcards_or_name)
    return repo_path(os.path.join(config["models"]["dir"], f"{name}.yaml"))


def get_truth_population(wildcards):
    """The simulator's truth (for recovery tables), or nothing for a user's dataset."""
    if config["data"]["path"]:
        return []
    return rules.simulate_trial.output.population


def get_truth_subjects(wildcards):
    """The simulator's per-patient truth (known-exposure reference fit), or nothing."""
    if config["data"]["path"]:
        return []
    return rules.simulate_trial.output.subjects


def get_response_outputs():
    """Exposures, response fits, comparison, the effects table and the response checks;
    nothing for a dataset without outcomes (models.response: [], e.g. a PK-only study).
    """
    if not config["models"]["response"]:
        return []
    return [
        rules.exposures.output.summary,
        *expand(
            [
                rules.fit_response.output.posterior,
                rules.fit_response.output.gate,
                *rules.gate_response.output,
            ],
            resp_model=config["models"]["response"],
        ),
        *rules.compare_models.output,
        *rules.biomarker_effects.output,
        *expand(rules.ppc_response.output, resp_model=config["models"]["response"]),
    ]


def get_reference_fits(wildcards=None):
    """Specs, posteriors and enforced gates (gate checks) of the reference PK and response models."""
    ref_resp = config["models"]["response"][0]
    return {
        "pk_spec": repo_path(
            os.path.join(config["models"]["dir"], f"{REFERENCE_PK}.yaml")
        ),
        "pk": f"{RESULTS}/pk/{REFERENCE_PK}/posterior.nc",
        "pk_gate": f"{RESULTS}/pk/{REFERENCE_PK}/gate_check.json",
        "response_spec": get_response_spec(ref_resp),
        "response": f"{RESULTS}/response/{ref_resp}/posterior.nc",
        "response_gate": f"{RESULTS}/response/{ref_resp}/gate_check.json",
    }


def get_reference_gates(wildcards=None):
    """The enforced gates (gate checks) of the reference PK and response models."""
    fits = get_reference_fits()
    return [fits["pk_gate"], fits["response_gate"]]


def get_concentrations(wildcards):
    path = config["dosing"]["concentrations"]
    return repo_path(path) if path else []


def get_dosing_outputs():
    """Recommendations, and the virtual trial on simulated data; nothing without response models."""
    if not config["models"]["response"]:
        return []
    out = [*rules.recommend_doses.output, *rules.dosing_pages.output]
    if not config["data"]["path"]:
        out += [*rules.dosing_trial.output, *rules.trial_page.output]
    return out
