"""Cost of one log density + gradient of the default PK model, A/B against other revisions.

The sampler's cost is the number of gradients times the cost of one; this measures the second
on the default virtual trial (the simulator's default design and seed, 210 subjects), as nutpie
calls it: the model's log density and its gradient with respect to all free parameters,
compiled with PyTensor's numba backend into one function of the joined parameter vector.

Each ``--rev`` (a git revision of this repository) is exported to a temporary folder and
imported under its own package name, so that every revision is compiled and timed in the same
process; the timings are interleaved (blocks of ``--calls`` calls, revision after revision,
``--blocks`` times) and counted in thread CPU time, which keeps the comparison fair on a
machine with other load. The revisions are checked to agree (log density and gradient, the
largest relative difference is printed and recorded). ``--rev WORKTREE`` is the working tree.

Usage::

    python benchmarks/pk_logp_grad.py --rev HEAD~3 WORKTREE
    python benchmarks/pk_logp_grad.py --rev a40d002 WORKTREE --out benchmarks/results/pk_logp_grad.csv
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKTREE = "WORKTREE"


def export(rev: str, into: Path) -> str:
    """Put revision ``rev``'s package under ``into`` as its own package; return its name."""
    if rev == WORKTREE:
        return "ketamine_pmx"
    name = "ketamine_pmx_" + "".join(c if c.isalnum() else "_" for c in rev)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src/ketamine_pmx"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "src" / "ketamine_pmx").rename(into / name)
    return name


def compile_logp_grad(package: str, table: pd.DataFrame, model_name: str):
    """(function of the joined free parameters -> [logp, gradient...], initial point)."""
    import pytensor
    import pytensor.tensor as pt
    from pymc.pytensorf import join_nonshared_inputs

    if importlib.util.find_spec(f"{package}.models") is not None:  # the package layout
        models = importlib.import_module(f"{package}.models")
        spec = models.load_pk_spec(REPO / "models" / f"{model_name}.yaml")
        data = models.prepare_pk_data(table, spec)
        model = models.build_pk_model(spec, data, models.empirical_bayes_start(spec, data))
    else:  # revisions with flat modules
        specs = importlib.import_module(f"{package}.specs")
        inference = importlib.import_module(f"{package}.inference")
        spec = specs.load_pk_spec(REPO / "models" / f"{model_name}.yaml")
        model = inference.build_pk_model(spec, inference.prepare_pk_data(table, spec))
    point = model.initial_point()
    free = model.value_vars
    logp = model.logp()
    grads = pytensor.grad(logp, free)
    [joined], x = join_nonshared_inputs(
        point, [pt.concatenate([logp[None], *(g.ravel() for g in grads)])], free
    )
    fn = pytensor.function([x], joined, mode="NUMBA")
    x0 = np.concatenate([np.ravel(point[v.name]) for v in free])
    return fn, x0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rev", nargs="+", default=[WORKTREE], help="git revisions, or WORKTREE")
    p.add_argument("--model", default="pk_2cmt_metab")
    p.add_argument("--subjects", type=int, default=210)
    p.add_argument("--blocks", type=int, default=30)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbed evaluation points")
    p.add_argument("--out", type=Path, default=None, help="CSV (one row per revision)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from pk_fit import TRIAL_SEED, machine, make_table

    table = make_table(args.subjects, TRIAL_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        fns, compile_s, sizes = {}, {}, {}
        for rev in args.rev:
            package = export(rev, Path(tmp))
            start = time.perf_counter()
            fn, x0 = compile_logp_grad(package, table, args.model)
            fn(x0)
            compile_s[rev] = time.perf_counter() - start
            fns[rev], sizes[rev] = fn, x0.size
            print(f"{rev}: compiled in {compile_s[rev]:.1f} s", flush=True)
    if len(set(sizes.values())) > 1:
        p.error(f"the revisions' models have different free parameters: {sizes}")
    rng = np.random.default_rng(args.seed)
    points = [x0 + 0.05 * rng.standard_normal(x0.size) for _ in range(8)]
    values = {rev: np.array([fn(x) for x in points]) for rev, fn in fns.items()}
    first = values[args.rev[0]]
    times: dict[str, list[float]] = {rev: [] for rev in fns}
    for _ in range(args.blocks):
        for rev, fn in fns.items():
            for i in range(args.calls):
                start = time.thread_time()
                fn(points[i % len(points)])
                times[rev].append(time.thread_time() - start)
    rows = []
    for rev, ts in times.items():
        ms = 1e3 * np.asarray(ts)
        diff = float(np.max(np.abs(values[rev] - first) / (np.abs(first) + 1e-8)))
        rows.append(
            {
                "rev": rev,
                "model": args.model,
                "subjects": args.subjects,
                "free_parameters": x0.size,
                "compile_s": round(compile_s[rev], 1),
                "min_ms": round(float(ms.min()), 3),
                "p10_ms": round(float(np.percentile(ms, 10)), 3),
                "median_ms": round(float(np.median(ms)), 3),
                "calls": ms.size,
                "max_rel_diff_to_first": diff,
                "machine": machine(),
                "command": "python benchmarks/pk_logp_grad.py "
                + shlex.join(argv if argv is not None else sys.argv[1:]),
            }
        )
    out = pd.DataFrame(rows)
    print(out.drop(columns=["machine", "command"]).to_string(index=False))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".tmp")
        out.to_csv(tmp_out, index=False)
        os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
