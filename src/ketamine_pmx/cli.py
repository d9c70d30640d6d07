"""The ``ketamine-pmx`` command: thin shells over library functions.

``ketamine-pmx simulate --config FILE --out DIR``
    simulate the virtual trial of a config into DIR (trial.csv + truth files).
``ketamine-pmx validate DATA.csv [--config FILE] [--out DIR]``
    validate a dataset; exit 0 when it is clean, 1 with every problem listed otherwise;
    with --out, write the clean table and the data summary there.
``ketamine-pmx recommend --patients FILE --run RESULTS_DIR [--out DIR] [--concentrations FILE]
[--figures auto|all|none]``
    individualised dose recommendations for the patients of FILE from a finished run's
    reference PK and response posteriors (written to DIR, default RESULTS_DIR/dosing/cli),
    with the file's warnings and the models' diagnostic gate status (from the run's gate files).
``ketamine-pmx fit --data FILE --spec SPEC [--config FILE] [--out DIR] [--seed N] [--draws N]
[--tune N] [--chains N]``
    validate a NONMEM-style dataset, fit a population PK model (a spec file, or a model name in
    the config's ``models.dir``) with NUTS, enforce the diagnostic gate and run the posterior
    predictive check; DIR (default ``<results_dir>/fit/<model>``) receives the files of
    :data:`FIT_FILES`, the tables in the units of the config's ``data.units``.

Exit codes: 0 success, 1 invalid data, 2 invalid usage or configuration, 3 the fit failed the
diagnostic gate (its diagnostics are written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ketamine_pmx.config import ConfigError, load_config, sampler_settings
from ketamine_pmx.data.validation import (
    DataValidationError,
    load_dataset,
    set_aside,
    summarise,
    write_outputs,
)
from ketamine_pmx.layout import CLI_RECOMMENDATIONS
from ketamine_pmx.layout import path as layout_path
from ketamine_pmx.meta import __version__

EXIT_OK, EXIT_INVALID_DATA, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3

#: The project's default run config, under the working directory: ``fit`` merges ``--config``
#: onto it, as a workflow run merges ``--configfile`` onto the Snakefile's config.
PROJECT_CONFIG = Path("config") / "config.yaml"

#: What ``ketamine-pmx fit`` writes into its output folder.
FIT_FILES = {
    "clean": "clean.csv",  # the validated dataset (library units)
    "data_summary": "summary.json",
    "data_summary_md": "summary.md",
    "posterior": "posterior.nc",
    "parameters": "parameters.csv",  # population parameters, user's units
    "diagnostics": "diagnostics.csv",  # R-hat, ESS per sampled parameter (model scale)
    "gate": "gate.json",
    "gate_check": "gate_check.json",
    "vpc_table": "vpc.csv",  # VPC and pcVPC, user's units
    "vpc_summary": "vpc_summary.csv",
    "gof_table": "gof.csv",  # DV, PRED, IPRED, NPD, user's units
    "gof_summary": "gof_summary.csv",
    "vpc": "vpc.png",
    "pcvpc": "pcvpc.png",
    "gof": "gof.png",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ketamine-pmx",
        description="Bayesian population PK/PD workflow for ketamine (research tool, not medical advice).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate the virtual ketamine trial")
    sim.add_argument(
        "--config", type=Path, default=None, help="run config (YAML); defaults if omitted"
    )
    sim.add_argument("--out", type=Path, required=True, help="output directory")
    sim.add_argument("--seed", type=int, default=None, help="override seeds.simulate")

    val = sub.add_parser("validate", help="validate a NONMEM-style dataset")
    val.add_argument("data", type=Path, help="dataset (CSV)")
    val.add_argument("--config", type=Path, default=None, help="run config with the data section")
    val.add_argument("--out", type=Path, default=None, help="write clean.csv and the summary here")
    rec = sub.add_parser("recommend", help="individualised dose recommendations (research use)")
    rec.add_argument("--patients", type=Path, required=True, help="patients file (CSV)")
    rec.add_argument("--run", type=Path, required=True, help="results directory of a finished run")
    rec.add_argument("--out", type=Path, default=None, help="output directory")
    rec.add_argument(
        "--concentrations", type=Path, default=None, help="measured concentrations (NONMEM rows)"
    )
    rec.add_argument("--config", type=Path, default=None, help="run config (YAML)")
    rec.add_argument(
        "--figures",
        choices=("auto", "all", "none"),
        default="auto",
        help="per-patient figures: all, none, or auto (cohorts of at most 100 patients)",
    )
    fit = sub.add_parser(
        "fit",
        help="fit a population PK model to a NONMEM-style dataset, gate and check it",
        description=(
            "Validate the dataset (every problem at once; nothing is sampled unless it is "
            "clean), fit the PK model with NUTS, enforce the diagnostic gate and run the "
            "posterior predictive check. --config is merged onto config/config.yaml when the "
            "working directory has one (as a workflow run does), else onto the defaults."
        ),
    )
    fit.add_argument("--data", type=Path, required=True, help="dataset (NONMEM-style CSV)")
    fit.add_argument(
        "--spec", required=True, help="PK model: a spec file (YAML) or a model name in models.dir"
    )
    fit.add_argument("--config", type=Path, default=None, help="run config (YAML)")
    fit.add_argument(
        "--out", type=Path, default=None, help="output folder (default <results_dir>/fit/<model>)"
    )
    fit.add_argument("--seed", type=int, default=None, help="override seeds.fit_pk")
    for name in ("draws", "tune", "chains"):
        fit.add_argument(
            f"--{name}", type=int, default=None, help=f"override sampler.{name} (per chain)"
        )
    return parser


def _fit_config(args: argparse.Namespace) -> dict:
    """The config of a ``fit``: ``--config`` on the project's config (when the working
    directory has one), the dataset and the command line's sampler and seed on top."""
    import yaml

    from ketamine_pmx.config import deep_merge

    overrides: dict = {"data": {"path": str(args.data)}}
    sampler = {k: getattr(args, k) for k in ("draws", "tune", "chains")}
    if any(v is not None for v in sampler.values()):
        overrides["sampler"] = {k: v for k, v in sampler.items() if v is not None}
    if args.seed is not None:
        overrides["seeds"] = {"fit_pk": args.seed}
    user: dict = {}
    if args.config is not None:
        load_config(args.config)  # its own problems, named by its file
        with open(args.config, encoding="utf-8") as fh:
            user = yaml.safe_load(fh) or {}
    if not PROJECT_CONFIG.is_file():
        return load_config(None, deep_merge(user, overrides))
    return load_config(PROJECT_CONFIG, deep_merge(user, overrides))


def _fit_spec(name: str, config: dict):
    """The spec ``--spec`` names: a file, or a model in the config's ``models.dir``."""
    from ketamine_pmx.models.spec import SpecError, load_pk_spec

    path = Path(name)
    if not path.is_file() and path.suffix not in (".yaml", ".yml") and path.parent == Path("."):
        path = Path(config["models"]["dir"]) / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(
            f"--spec {name}: no such spec file, and no model of that name in models.dir "
            f"({config['models']['dir']})"
        )
    return load_pk_spec(path)


def _fit(args: argparse.Namespace) -> int:
    import pandas as pd

    from ketamine_pmx import checks
    from ketamine_pmx.data.validation import subject_strata
    from ketamine_pmx.inference.pk_fit import fit_pk
    from ketamine_pmx.inference.posterior_files import run_timings, save_idata
    from ketamine_pmx.io import OutputError, check_outputs, write_csv, write_figure, write_json
    from ketamine_pmx.models.pk_data import FitError, prepare_pk_data
    from ketamine_pmx.models.spec import SpecError
    from ketamine_pmx.plots import gof, vpc
    from ketamine_pmx.results import (
        gof_in_user_units,
        observations_in_user_units,
        parameter_summary,
        vpc_in_user_units,
    )

    try:
        config = _fit_config(args)
        spec = _fit_spec(args.spec, config)
        out = args.out if args.out is not None else Path(config["results_dir"]) / "fit" / spec.name
        files = {k: out / v for k, v in FIT_FILES.items()}
        check_outputs(files.values(), [args.data, args.config, Path(spec.path)])
    except (ConfigError, SpecError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        validated = load_dataset(args.data, config["data"])
        prepare_pk_data(validated.table, spec, str(args.data))  # refused before sampling
    except DataValidationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID_DATA
    except FitError as exc:
        print(f"error: {args.data}: {exc}", file=sys.stderr)
        return EXIT_INVALID_DATA
    for warning in validated.warnings:
        print("warning: " + warning.format(validated.source), file=sys.stderr)
    try:
        write_outputs(validated, files["clean"], files["data_summary"], files["data_summary_md"])
    except OSError as exc:
        print(f"error: --out {out}: cannot write the outputs ({exc})", file=sys.stderr)
        return EXIT_USAGE
    units = config["data"]["units"]
    sampler = sampler_settings(config, "pk")
    print(
        f"fitting {spec.name} to {args.data}: {sampler['chains']} chains x {sampler['draws']} "
        f"draws after {sampler['tune']} tuning ({sampler['backend']})",
        file=sys.stderr,
    )
    idata, data = fit_pk(validated.table, spec, sampler, config["seeds"]["fit_pk"], str(args.data))
    print(f"timings (s): {run_timings(idata)}", file=sys.stderr)
    save_idata(idata, files["posterior"])
    gate_rules = {k: v for k, v in config["gate"].items() if not k.startswith("allow_failure")}
    checks.diagnose(idata, gate_rules, files["diagnostics"], files["gate"])
    kinds = {name: spec.kind(name) for name in spec.parameters}
    write_csv(files["parameters"], parameter_summary(idata, kinds, units), float_format="%.6g")
    try:
        check = checks.enforce_gate(spec.name, files["gate"], files["diagnostics"], config["gate"])
    except checks.GateError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_GATE
    write_json(files["gate_check"], check)
    ck, seed = config["checks"], config["seeds"]["ppc"]
    reps = checks.simulate_replicates(spec, idata, data, ck["replicates"], seed)
    strata = subject_strata(validated.table)
    tables = [
        checks.vpc_table(data, reps, strata, pc, ck["bin_gap"], ck["min_bin_obs"])
        for pc in (False, True)
    ]
    vpcs = pd.concat(tables, ignore_index=True)
    write_csv(files["vpc_table"], vpc_in_user_units(vpcs, units), float_format="%.6g")
    write_csv(files["vpc_summary"], checks.vpc_summary(vpcs), float_format="%.4g")
    gof_table = checks.gof_table(data, reps, seed)
    gof_user = gof_in_user_units(gof_table, units)
    write_csv(files["gof_table"], gof_user, float_format="%.6g")
    write_csv(files["gof_summary"], checks.gof_summary(gof_table), float_format="%.4g")
    points = observations_in_user_units(data.obs, units)
    points = points.assign(stratum=points["ID"].map(strata).astype(str))
    write_figure(files["vpc"], vpc(vpc_in_user_units(tables[0], units), points))
    write_figure(files["pcvpc"], vpc(vpc_in_user_units(tables[1], units)))
    write_figure(files["gof"], gof(gof_user))
    if not check["gate_passed"]:
        print(f"warning: {spec.name} failed the diagnostic gate; allowed by "
              f"{check['allowed_by']}", file=sys.stderr)  # fmt: skip
    print(
        f"{spec.name}: {len(data.subjects)} subjects, {len(data.obs)} observations; "
        f"gate {'passed' if check['gate_passed'] else 'FAILED (allowed)'}; wrote {out}"
    )
    return EXIT_OK


def _recommend(args: argparse.Namespace) -> int:
    from ketamine_pmx.data.patients import load_concentrations, read_patients
    from ketamine_pmx.dosing.decision import recommend
    from ketamine_pmx.dosing.fits import DosingError, load_models
    from ketamine_pmx.dosing.regimens import regimen_grid
    from ketamine_pmx.dosing.report import (
        Caveats,
        check_output_dir,
        gate_failures,
        patient_file_names,
        write_recommendation,
    )
    from ketamine_pmx.io import OutputError
    from ketamine_pmx.models.pk_data import FitError
    from ketamine_pmx.models.spec import ResponseSpecError, SpecError
    from ketamine_pmx.plots import dose_recommendation

    out = args.out if args.out is not None else args.run / CLI_RECOMMENDATIONS
    try:
        config = load_config(args.config)
        regimen_grid(config["dosing"])
        models_dir = Path(config["models"]["dir"])
        pk_name, resp_name = config["models"]["pk"][0], config["models"]["response"][0]
        posteriors = {
            pk_name: args.run / layout_path("fit_pk", "posterior", pk_model=pk_name),
            resp_name: args.run / layout_path("fit_response", "posterior", resp_model=resp_name),
        }
        fits = {name: posterior.parent for name, posterior in posteriors.items()}  # gate files
        paths = [
            models_dir / f"{pk_name}.yaml",
            posteriors[pk_name],
            models_dir / f"{resp_name}.yaml",
            posteriors[resp_name],
        ]
        for path in paths:
            if not path.is_file():
                raise DosingError(f"{path} not found (run the workflow, or give --config)")
        check_output_dir(out, [args.patients, args.concentrations, args.config, *paths])
        gates = gate_failures(fits)
        try:
            models = load_models(*paths, config["response"]["endpoints"])
        except (OSError, KeyError) as exc:
            raise DosingError(f"{paths[1]} or {paths[3]}: cannot be read ({exc!r})") from None
    except (
        ConfigError,
        DosingError,
        FitError,
        OutputError,
        SpecError,
        ResponseSpecError,
        IndexError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        patients, warnings = read_patients(
            args.patients,
            models.needed_covariates(),
            models.indications,
            config["dosing"],
            config["data"],
        )
        conc = None
        if args.concentrations is not None:
            conc = load_concentrations(args.concentrations, patients, config["data"])
    except DataValidationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID_DATA
    caveats = Caveats.from_warnings(warnings, patients, args.patients, gates)
    for line in caveats.messages():
        print(line, file=sys.stderr)
    try:
        result = recommend(models, patients, config["dosing"], config["seeds"]["dosing"], conc)
    except DosingError as exc:
        print(f"error: {args.patients}: {exc}", file=sys.stderr)
        return EXIT_INVALID_DATA
    figures = {"auto": None, "all": True, "none": False}[args.figures]
    names = patient_file_names(patients["ID"])
    try:
        rec = write_recommendation(
            result, out, config["dosing"], caveats, names, figures, draw=dose_recommendation
        )
    except OSError as exc:
        print(f"error: --out {out}: cannot write the outputs ({exc})", file=sys.stderr)
        return EXIT_USAGE
    cols = ["ID", "INDICATION", "METHOD", "REGIMEN", "P_RESPONSE", "LIKELY_NON_RESPONDER", "STATUS"]
    print(rec[cols].to_string(index=False))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    drawn = int(rec["FIGURE_FILE"].notna().sum())
    print(
        f"wrote {out}: {len(rec)} patient(s), {drawn} figure(s) "
        "(research output, not medical advice)"
    )
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from ketamine_pmx.simulate.trial import ParameterFileError, simulate_trial, trial_summary

    overrides = {"seeds": {"simulate": args.seed}} if args.seed is not None else None
    try:
        config = load_config(args.config, overrides)
        trial = simulate_trial(config)
    except (ConfigError, ParameterFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    paths = trial.write(args.out)
    print(trial_summary(trial))
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from ketamine_pmx.io import OutputError, check_outputs

    outputs = (
        [
            args.out / Path(layout_path("validate_data", name)).name
            for name in ("clean", "summary_json", "summary_md")
        ]
        if args.out is not None
        else []
    )
    try:
        config = load_config(args.config)
        check_outputs(outputs, [args.data, args.config])
    except (ConfigError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        validated = load_dataset(args.data, config["data"])
    except DataValidationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID_DATA
    for warning in validated.warnings:
        print("warning: " + warning.format(validated.source), file=sys.stderr)
    if args.out is not None:
        try:
            summary = write_outputs(validated, *outputs)
        except OSError as exc:
            print(f"error: {args.out}: cannot write the outputs: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        summary = summarise(validated)
    print(
        f"{args.data}: valid ({summary['subjects']} subjects, {summary['dose_rows']} doses, "
        f"{summary['observation_rows']} observations, "
        f"{100 * summary['blq_share_concentrations']:.1f}% of concentrations BLQ)"
        + "".join(f"; {line}" for line in set_aside(summary))
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "simulate": _simulate,
        "validate": _validate,
        "recommend": _recommend,
        "fit": _fit,
    }
    return handlers[args.command](args)


__all__ = [
    "FIT_FILES",
    "main",
]


if __name__ == "__main__":
    sys.exit(main())
