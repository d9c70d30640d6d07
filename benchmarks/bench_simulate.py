"""Time the virtual trial simulator and validation at smoke and default sizes.

Usage: python benchmarks/bench_simulate.py [--repeat N]
Prints a Markdown table row per size; results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ketamine_pmx.config import load_config
from ketamine_pmx.data import load_dataset
from ketamine_pmx.simulate import simulate_trial

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| config | subjects | rows | simulate (s, best of N) | validate (s, best of N) |")
    print("|---|---|---|---|---|")
    for name in ("smoke", "config"):
        cfg = load_config(
            REPO / "config" / f"{name}.yaml",
            {"simulation": {"parameters": str(REPO / "data/truth/ketamine_virtual_trial.yaml")}},
        )
        sim_times, val_times = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            trial = simulate_trial(cfg)
            sim_times.append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as tmp:
                path = trial.write(tmp)["data"]
                t0 = time.perf_counter()
                load_dataset(path, cfg["data"])
                val_times.append(time.perf_counter() - t0)
        print(
            f"| {name}.yaml | {trial.data['ID'].nunique()} | {len(trial.data)} | "
            f"{min(sim_times):.2f} | {min(val_times):.2f} |"
        )


if __name__ == "__main__":
    main()
