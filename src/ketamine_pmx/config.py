"""Loading and validating a run configuration.

The JSON Schema in ``ketamine_pmx/schemas/config.schema.yaml`` is the single definition of the
configuration: Snakemake validates ``config`` against it (``workflow/schemas`` links to it) and the
CLI uses :func:`load_config`, which applies the same schema and fills in the same defaults.
YAML is always read with ``yaml.safe_load``; no config string is ever evaluated.
"""

from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and key."""


def schema_path(name: str = "config") -> Path:
    """Path of a packaged schema (``config`` or ``pk_model``)."""
    return Path(str(resources.files("ketamine_pmx") / "schemas" / f"{name}.schema.yaml"))


@functools.cache
def load_schema(name: str = "config") -> dict[str, Any]:
    """A packaged schema, read once per process (callers must not modify it)."""
    with open(schema_path(name), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills each object's missing properties with their defaults."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def validate_config(config: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with defaults filled in.

    All schema violations are reported together, each with its key path. A ``results_dir``
    the config gives is checked by :func:`results_dir_problems` (relative to the working
    directory).
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"{source}: the configuration must be a mapping, got {type(config).__name__}"
        )
    filled = validate_with_schema(config, load_schema("config"), source, "configuration")
    given_codes = (config.get("data") or {}).get("codes") or {}
    # results_dir is checked where a config gives it (not in the sections a job validates)
    _check_semantics(
        filled,
        source,
        results_dir="results_dir" in config,
        dose_cmt_given="dose_cmt" in given_codes,
    )
    return filled


def validate_with_schema(
    instance: dict[str, Any],
    schema: dict[str, Any],
    source: str,
    what: str,
    error: type[Exception] = ConfigError,
) -> dict[str, Any]:
    """A copy of ``instance`` with defaults filled in; every violation reported with its key."""
    filled = copy.deepcopy(instance)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{source}: invalid {what} ({len(errors)} problem(s)):"]
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"  - {key}: {_message(err)}")
        raise error("\n".join(lines))
    return filled


def _message(err: jsonschema.ValidationError) -> str:
    """The error's text; a refused (``not``) key says what its schema's description says."""
    if err.validator == "not" and isinstance(err.validator_value, dict):
        text = err.validator_value.get("description")
        if text:
            return " ".join(text.split())
    return err.message


def _refuse(problems: list[str], source: str) -> None:
    """Raise :class:`ConfigError` listing ``problems``, if any."""
    if problems:
        raise ConfigError(f"{source}: invalid configuration:\n  - " + "\n  - ".join(problems))


#: A text code of data.codes.observation (DVID text such as ``cp``): letters, digits, ``_``.
_TEXT_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


#: The tests of a data.exclude condition; each condition gives exactly one.
EXCLUDE_TESTS = ("equals", "in", "below", "above")


def _is_number(code: str) -> bool:
    try:
        float(code)
    except ValueError:
        return False
    return True


def _check_semantics(
    config: dict[str, Any], source: str, results_dir: bool = True, dose_cmt_given: bool = False
) -> None:
    """Rules a JSON Schema cannot express. ``dose_cmt_given``: the config itself (not the
    defaults) gives data.codes.dose_cmt."""
    problems = []
    mix = config["simulation"]["population_mix"]
    if mix and sum(mix.values()) <= 0:
        problems.append("simulation.population_mix: shares must not all be zero")
    for name, rng in config["data"]["plausibility"].items():
        if rng["min"] > rng["max"]:
            problems.append(f"data.plausibility.{name}: min {rng['min']} > max {rng['max']}")
    codes = config["data"]["codes"]
    for key in ("dose_cmt", "dose_route", "evid"):
        for code in codes[key]:
            if not _is_number(code):
                problems.append(f"data.codes.{key}: code {code!r} is not a number")
    obs_col = codes["observation_code_column"]
    for code in codes["observation"]:
        if _is_number(code):
            continue
        if obs_col != "DVID":
            problems.append(
                f"data.codes.observation: code {code!r} is not a number; text codes are read "
                f"from DVID only (data.codes.observation_code_column is {obs_col}, and CMT "
                "codes are numbers)"
            )
        elif not _TEXT_CODE.match(code):
            problems.append(
                f"data.codes.observation: code {code!r} is neither a number nor a text code "
                "(a letter, then letters, digits or _; e.g. cp)"
            )
    lowered = [str(c).lower() for c in codes["observation"] if not _is_number(str(c))]
    for code in sorted({c for c in lowered if lowered.count(c) > 1}):
        problems.append(
            f"data.codes.observation: text code {code!r} is given twice in different case; "
            "text codes are matched case-insensitively"
        )
    for i, condition in enumerate(config["data"]["exclude"]):
        tests = [t for t in EXCLUDE_TESTS if t in condition]
        if len(tests) != 1:
            found = f"got {' and '.join(tests)}" if tests else "got none"
            problems.append(
                f"data.exclude[{i}] (column {condition['column']}): give exactly one of "
                f"{', '.join(EXCLUDE_TESTS)} ({found}); list one condition per test"
            )
    if dose_cmt_given and codes["dose_route"]:
        problems.append(
            "data.codes.dose_cmt and data.codes.dose_route both read the CMT column of dose "
            "rows, as the product and as the route; give one: dose_route (CMT numbers "
            "compartments; name the product in ANALYTE or PRODUCT, or set data.single_drug) "
            "or dose_cmt (CMT names the product; give routes in a ROUTE column)"
        )
    if results_dir:
        problems += results_dir_problems(config)
    refs = [m[0] for m in (config["models"]["pk"], config["models"]["response"]) if m]
    for name in sorted(set(refs) & set(config["gate"]["allow_failure_for"])):
        problems.append(
            f"gate.allow_failure_for: {name} is a reference model (everything downstream uses "
            "it); its gate must pass, or set gate.allow_failure for an exploratory run"
        )
    _refuse(problems, source)


#: A project's folders of inputs: a results_dir may not be one, lie in one or hold one.
INPUT_FOLDERS = ("data", "config", "models", "src", "workflow")
#: Config keys naming input files or folders: a results_dir may not hold any of them.
INPUT_KEYS = (
    ("data", "path"),
    ("simulation", "parameters"),
    ("models", "dir"),
    ("dosing", "patients"),
    ("dosing", "concentrations"),
)
RESULTS_DIR_RULE = (
    "results_dir must name a folder of the run's own (e.g. results or results/my_run): not "
    "empty, not the project folder or a folder above it, and neither inside nor holding the "
    f"project's inputs ({', '.join(f + '/' for f in INPUT_FOLDERS)} and the files the config "
    "names)"
)


def results_dir_problems(config: dict[str, Any], roots: tuple[str | Path, ...] = ()) -> list[str]:
    """Why the config's ``results_dir`` would write where a run must not (empty when it is fine).

    ``results_dir`` is relative to the working directory. The working directory and ``roots``
    (e.g. the folder of the Snakefile) are project folders: the results directory may not be one
    of them or a folder above one, nor be or lie in one of their input folders
    (:data:`INPUT_FOLDERS`), nor hold a file or folder that a key of :data:`INPUT_KEYS` names.
    """
    raw = config["results_dir"]
    if not raw.strip():
        return [
            f"results_dir: {raw!r} is empty, so every output would be written from the root of "
            f"the filesystem (/simulated/..., /data/...); {RESULTS_DIR_RULE}"
        ]
    cwd = Path.cwd()
    target = (cwd / raw).resolve()
    projects = sorted({cwd.resolve(), *(Path(r).resolve() for r in roots)})
    for project in projects:
        if target == project or target in project.parents:
            where = "the project folder" if target == project else f"{target}, a folder above"
            return [
                f"results_dir: {raw!r} is {where} {project}, whose inputs the run's outputs "
                f"would overwrite; {RESULTS_DIR_RULE}"
            ]
        for name in INPUT_FOLDERS:
            folder = project / name
            if folder.is_dir() and (target == folder or folder in target.parents):
                return [
                    f"results_dir: {raw!r} is {target}, inside the project's input folder "
                    f"{folder}; {RESULTS_DIR_RULE}"
                ]
    for section, key in INPUT_KEYS:
        given = config[section][key]
        places = [(project / given).resolve() for project in projects] if given else []
        held = any(target == place or target in place.parents for place in places)
        if held:
            return [
                f"results_dir: {raw!r} holds {section}.{key} ({given}), an input the run's "
                f"outputs could overwrite; {RESULTS_DIR_RULE}"
            ]
    return []


def check_results_dir(
    config: dict[str, Any], source: str = "<config>", roots: tuple[str | Path, ...] = ()
) -> None:
    """Raise :class:`ConfigError` when :func:`results_dir_problems` finds any."""
    _refuse(results_dir_problems(config, roots), source)


SAMPLER_FAMILIES = ("pk", "response")


def sampler_settings(config: dict[str, Any], family: str) -> dict[str, Any]:
    """The NUTS settings of one model family's fits: the shared ``sampler`` keys with the
    family's overrides (``sampler.pk`` or ``sampler.response``) on top. ``config`` is a
    validated config; a missing override section counts as empty."""
    if family not in SAMPLER_FAMILIES:
        raise ValueError(f"family must be one of {SAMPLER_FAMILIES}, got {family!r}")
    shared = {k: v for k, v in config["sampler"].items() if k not in SAMPLER_FAMILIES}
    return {**shared, **config["sampler"].get(family, {})}


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read a YAML config (or start from the defaults), merge ``overrides``, validate."""
    config: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            with open(path, encoding="utf-8") as fh:
                config = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config, source)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` merged into ``base`` key by key (mappings recursively)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def schema_markdown() -> str:
    """Every configuration key with its type, default and description, as Markdown.

    ``config/README.md`` is this text; a test keeps the two identical.
    """
    schema = load_schema()
    lines = [
        "# Configuration keys",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by "
        "`python -m ketamine_pmx.config > config/README.md`; a test keeps it in step with the schema.",
        "Keys left out of a config file take the default shown. `config.yaml` is the default "
        "(real-sized) run, `smoke.yaml` a seconds-long run for tests.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref:
            target = schema
            for part in ref.lstrip("#/").split("/"):
                target = target[part]
            if ref.startswith("#/properties/"):  # another key's type: not its default
                target = {k: v for k, v in target.items() if k != "default"}
            return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            sub = resolve(sub)
            key = f"{prefix}{name}"
            kind = sub.get("type", "object")
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            if "enum" in sub:
                kind += " (" + ", ".join(str(v) for v in sub["enum"]) + ")"
            default = f"`{json_inline(sub['default'])}`" if "default" in sub else ""
            desc = " ".join(str(sub.get("description", "")).split())
            lines.append(f"| `{key}` | {kind} | {default} | {desc} |")
            if "properties" in sub:
                walk(sub, key + ".")

    walk(schema, "")
    return "\n".join(lines) + "\n"


def json_inline(value: Any) -> str:
    import json

    return json.dumps(value).replace("|", "\\|") if value != "" else ""


__all__ = [
    "EXCLUDE_TESTS",
    "INPUT_FOLDERS",
    "INPUT_KEYS",
    "RESULTS_DIR_RULE",
    "SAMPLER_FAMILIES",
    "ConfigError",
    "check_results_dir",
    "deep_merge",
    "json_inline",
    "load_config",
    "load_schema",
    "results_dir_problems",
    "sampler_settings",
    "schema_markdown",
    "schema_path",
    "validate_config",
    "validate_with_schema",
]


if __name__ == "__main__":
    print(schema_markdown(), end="")
