"""The ``ketamine-pmx`` command: thin shells over library functions.

``ketamine-pmx simulate --config FILE --out DIR``
    simulate the virtual trial of a config into DIR (trial.csv + truth files).
``ketamine-pmx validate DATA.csv [--config FILE] [--out DIR]``
    validate a dataset; exit 0 when it is clean, 1 with every problem listed otherwise;
    with --out, write the clean table and the data summary there.

Exit codes: 0 success, 1 invalid data, 2 invalid usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .data import DataValidationError, load_dataset, summarise, write_outputs

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
    return parser


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import ParameterFileError, simulate_trial, trial_summary

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
    try:
        config = load_config(args.config)
    except ConfigError as exc:
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
        summary = write_outputs(
            validated, args.out / "clean.csv", args.out / "summary.json", args.out / "summary.md"
        )
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
    handlers = {"simulate": _simulate, "validate": _validate}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
