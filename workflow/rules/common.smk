# Input logic shared by all stages: config validation, paths, input functions.
import os

from snakemake.utils import validate

from ketamine_pmx.config import ConfigError, check_results_dir, sampler_settings
from ketamine_pmx.layout import path as layout_path

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


def result_path(rule, output, **fill):
    """Where ``rule`` writes ``output``: the results directory, then the output's path in
    ketamine_pmx.layout (the one table of the results layout, which ketamine_pmx.results and
    the CLI read too), with the placeholders in ``fill`` filled in."""
    return f"{RESULTS}/{layout_path(rule, output, **fill)}"


def repo_path(path):
    """A config path as given if it exists from the working directory, else from the workflow."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


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

# The gate's thresholds (config gate less allow_failure*): what diagnose_pk and fit_response
# compute the gate and flags from. Whether a failure may pass is the gate rules' business, so
# changing it reruns only them.
GATE_THRESHOLDS = {
    k: v for k, v in config["gate"].items() if not k.startswith("allow_failure")
}


def get_pk_spec(wildcards_or_name):
    """The specification file of a PK model (wildcards or a model name)."""
    name = getattr(wildcards_or_name, "pk_model", wildcards_or_name)
    return repo_path(os.path.join(config["models"]["dir"], f"{name}.yaml"))


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


def get_reference_pk(wildcards=None):
    """Spec, posterior and enforced gate (gate check) of the reference PK model."""
    (posterior,) = expand(rules.fit_pk.output.posterior, pk_model=REFERENCE_PK)
    (gate,) = expand(rules.gate_pk.output.check, pk_model=REFERENCE_PK)
    return {"spec": get_pk_spec(REFERENCE_PK), "posterior": posterior, "gate": gate}


def get_reference_response_spec(wildcards=None):
    """The specification file of the reference response model (the first of models.response)."""
    return get_response_spec(config["models"]["response"][0])


def get_reference_fits(wildcards=None):
    """Specs, posteriors and enforced gates (gate checks) of the reference PK and response models."""
    ref_resp = config["models"]["response"][0]
    (posterior,) = expand(rules.fit_response.output.posterior, resp_model=ref_resp)
    (gate,) = expand(rules.gate_response.output.check, resp_model=ref_resp)
    pk = get_reference_pk()
    return {
        "pk_spec": pk["spec"],
        "pk": pk["posterior"],
        "pk_gate": pk["gate"],
        "response_spec": get_reference_response_spec(),
        "response": posterior,
        "response_gate": gate,
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
