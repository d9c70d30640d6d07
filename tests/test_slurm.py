"""SLURM: the smoke workflow on a one-node SLURM cluster of this machine, every rule a SLURM job.

Opt-in, because tests/slurm/run_slurm_smoke.sh installs Debian packages (slurm-wlm, slurmdbd,
munge, mariadb-server) and starts daemons: it runs only as root on a machine with apt-get and with
KETAMINE_PMX_SLURM=1 set, and takes about ten minutes on two cores (the fits dominate).

    KETAMINE_PMX_SLURM=1 pytest -m slurm
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO

SCRIPT = REPO / "tests" / "slurm" / "run_slurm_smoke.sh"


def _skip_reason() -> str | None:
    if os.environ.get("KETAMINE_PMX_SLURM") != "1":
        return (
            "opt-in: set KETAMINE_PMX_SLURM=1 to install SLURM with apt-get and run the smoke "
            "workflow on a one-node cluster (root, about 10 minutes)"
        )
    if os.geteuid() != 0:
        return "needs root (installs packages, starts SLURM daemons)"
    if shutil.which("apt-get") is None:
        return "needs apt-get (Debian or Ubuntu)"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
]


def _models(family: str) -> list[str]:
    """The models of the smoke run: config.yaml's, unless smoke.yaml names its own."""
    models = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][family]
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    return smoke.get("models", {}).get(family, models)


def _pk_models() -> list[str]:
    return _models("pk")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "KETAMINE_PMX_SLURM_WORKDIR": str(work)}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=3600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return work, output


def test_every_rule_ran_as_a_completed_slurm_job(slurm_run):
    work, output = slurm_run
    with open(work / "sacct.txt", newline="") as fh:
        jobs = list(csv.DictReader(fh, delimiter="|"))
    expected = {
        f"rule_{rule}"
        for rule in (
            "simulate_trial",
            "validate_data",
            "exposures",
            "compare_models",
            "biomarker_effects",
            "recommend_doses",
            "dosing_trial",
        )
    }
    expected |= {
        f"rule_{rule}_wildcards_{model}"
        for rule in ("fit_pk", "diagnose_pk", "ppc_pk")
        for model in _pk_models()
    }
    expected |= {
        f"rule_{rule}_wildcards_{m}"
        for rule in ("fit_response", "ppc_response")
        for m in _models("response")
    }
    expected |= {f"rule_recommend_batch_wildcards_{b}" for b in range(2)}  # dosing.batches
    assert sorted(job["Comment"] for job in jobs) == sorted(expected), jobs
    for job in jobs:
        assert job["State"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["Account"] == "ketamine-pmx" and job["Partition"] == "debug", job
    # Every job Snakemake submitted is one of these records, and nothing ran outside SLURM.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    assert sorted(submitted) == sorted(job["JobID"] for job in jobs)
    # fit_pk asks for sampler.cores threads and the smoke profile's memory
    # (workflow/profiles/smoke), not the rule's own 8000 MB for the default run.
    fits = [job for job in jobs if job["Comment"].startswith("rule_fit_pk_")]
    assert all(job["AllocCPUS"] == "2" and job["ReqMem"] == "4000M" for job in fits), fits
    timings = dict(line.split() for line in (work / "timings.txt").read_text().splitlines())
    print("seconds:", timings)


def test_the_slurm_run_wrote_every_output(slurm_run):
    work, _ = slurm_run
    results = work / "workflow" / "results" / "smoke"
    for name in ("clean.csv", "summary.json", "summary.md", "overview.png"):
        assert (results / "data" / name).stat().st_size > 0, name
    for model in _pk_models():
        for name in ("posterior.nc", "diagnostics.csv", "gate.json"):
            assert (results / "pk" / model / name).stat().st_size > 0, (model, name)


def test_every_daemon_was_stopped(slurm_run):
    _, output = slurm_run
    started = dict(re.findall(r"started (\w+) \(pid (\d+)\)", output))
    assert set(started) == {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}
    for name, pid in started.items():
        assert f"stopped {name} (pid {pid})" in output
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert not os.path.lexists("/etc/slurm/slurm.conf")
