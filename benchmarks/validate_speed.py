"""Time and peak memory of ``ketamine-pmx validate`` on a large dataset.

    python benchmarks/validate_speed.py --rows 3000000 [--out-dir DIR] [--no-write] [--keep]

Builds a valid dataset of at least ``--rows`` rows by tiling a simulated trial (the smoke run's
``results/smoke/simulated/trial.csv`` when present, otherwise the smoke config's trial simulated
here) with a distinct ID for every copy of a subject, then runs the command in a child process
and reports its wall time and peak resident memory (``os.wait4``'s ``ru_maxrss``). With
``--out-dir`` (the default, a temporary directory) the command also writes the clean table and
the data summary, as the workflow's validate_data step does; ``--no-write`` only validates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRIAL = ROOT / "results" / "smoke" / "simulated" / "trial.csv"


def source_lines() -> tuple[str, list[str]]:
    """Header and data lines of a simulated trial (numeric, whole-number IDs)."""
    if SMOKE_TRIAL.is_file():
        text = SMOKE_TRIAL.read_text(encoding="utf-8")
    else:
        sys.path.insert(0, str(ROOT / "src"))
        from ketamine_pmx.config import load_config
        from ketamine_pmx.simulate import simulate_trial

        os.chdir(ROOT)
        with tempfile.TemporaryDirectory() as tmp:
            path = simulate_trial(load_config("config/smoke.yaml")).write(tmp)["data"]
            text = Path(path).read_text(encoding="utf-8")
    header, *lines = text.splitlines()
    return header, lines


def build(path: Path, rows: int) -> tuple[int, int]:
    """Write copies of the trial, each subject under a new ID, until ``rows`` rows are reached.

    Returns (rows, subjects) written. Every copy is the whole trial, so the file stays valid
    (sorted by ID then TIME, a dose before every subject's observations).
    """
    header, lines = source_lines()
    ids, rests = zip(*(line.split(",", 1) for line in lines), strict=True)
    ids = [int(i) for i in ids]
    offset = max(ids)
    subjects = len(set(ids))
    copies = -(-rows // len(lines))
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(header + "\n")
        for k in range(copies):
            base = k * offset
            fh.write("".join(f"{i + base},{rest}\n" for i, rest in zip(ids, rests, strict=True)))
    return copies * len(lines), copies * subjects


def measure(data: Path, out_dir: Path | None) -> dict:
    """Run ``ketamine-pmx validate`` on ``data`` in a child process: wall time, peak RSS."""
    cmd = [sys.executable, "-m", "ketamine_pmx.cli", "validate", str(data)]
    if out_dir is not None:
        cmd += ["--out", str(out_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "stdout": out.strip()[-300:],
        "stderr": err.strip()[-300:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--out-dir", type=Path, default=None, help="validate's --out (default: temp)")
    ap.add_argument("--no-write", action="store_true", help="validate only, write nothing")
    ap.add_argument("--keep", type=Path, default=None, help="build the file here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.keep or Path(tmp) / "large.csv"
        t0 = time.perf_counter()
        n_rows, n_subjects = build(data, args.rows)
        built = time.perf_counter() - t0
        out_dir = None if args.no_write else (args.out_dir or Path(tmp) / "out")
        load_before = os.getloadavg()[0]
        result = measure(data, out_dir)
        record = {
            "rows": n_rows,
            "subjects": n_subjects,
            "file_mb": round(data.stat().st_size / 2**20, 1),
            "build_s": round(built, 1),
            "writes_outputs": out_dir is not None,
            **result,
            "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
    print(json.dumps(record, indent=2))
    if record["exit_code"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
