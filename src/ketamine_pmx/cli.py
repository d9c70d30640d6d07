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

Exit codes: 0 success, 1 invalid data, 2 invalid usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ketamine_pmx.config import ConfigError, load_config
from ketamine_pmx.data.validation import DataValidationError, load_dataset, summarise, write_outputs
from ketamine_pmx.layout import CLI_RECOMMENDATIONS
from ketamine_pmx.layout import path as layout_path
from ketamine_pmx.meta import __version__

EXIT_OK, EXIT_INVALID_DATA, EXIT_USAGE = 0, 1, 2


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
    return parser


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
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"simulate": _simulate, "validate": _validate, "recommend": _recommend}
    return handlers[args.command](args)


__all__ = [
    "main",
]


if __name__ == "__main__":
    sys.exit(main())
