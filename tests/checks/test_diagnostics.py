"""The diagnostic gate enforced on a fit's kept gate.json (the gate check, or a stop), and eta
shrinkage."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest

from ketamine_pmx.checks import GateError, enforce_gate, eta_shrinkage

GATE = {
    "rhat_max": 1.01,
    "ess_min": 400,
    "max_divergences": 0,
    "e_bfmi_min": 0.3,
    "allow_failure": False,
    "allow_failure_for": ["pk_1cmt_metab"],
}


def kept_gate(tmp_path, failures, **extra):
    """A model's gate.json (as diagnose writes it) and its diagnostics.csv."""
    gate_json = tmp_path / "gate.json"
    record = {"divergences": 0, "gate_passed": not failures, "gate_failures": failures}
    gate_json.write_text(json.dumps({**record, **extra}))
    table = tmp_path / "diagnostics.csv"
    table.write_text("parameter,r_hat\nlog_cl_pop[S],1.0\n")
    return gate_json, table


def test_a_passed_gate_gives_its_check(tmp_path):
    gate_json, table = kept_gate(tmp_path, [])
    check = enforce_gate("pk_2cmt_metab", gate_json, table, GATE)
    assert check == {
        "model": "pk_2cmt_metab",
        "gate_passed": True,
        "allowed_past_failed_gate": False,
        "allowed_by": None,
        "gate_failures": [],
    }


def test_a_failed_gate_stops_the_run_naming_the_kept_files(tmp_path):
    failures = ["ess_bulk 120 < 400 (omega_vc[S])"]
    gate_json, table = kept_gate(
        tmp_path, failures, flags=["omega_q[R]: near 0"], advice=["drop omega_q"]
    )
    with pytest.raises(GateError) as err:
        enforce_gate("pk_2cmt_metab", gate_json, table, GATE)
    message = str(err.value)
    assert message.startswith("diagnostic gate FAILED for pk_2cmt_metab:")
    assert failures[0] in message
    assert "flag omega_q[R]: near 0" in message and "proposal: drop omega_q" in message
    assert f"Diagnostics kept in {table} and {gate_json}." in message
    assert "gate.allow_failure_for" in message


@pytest.mark.parametrize(
    ("model", "settings", "allowed_by"),
    [
        ("pk_1cmt_metab", {}, "gate.allow_failure_for"),
        ("pk_2cmt_metab", {"allow_failure": True}, "gate.allow_failure"),
    ],
)
def test_the_config_may_let_a_failed_gate_through(tmp_path, model, settings, allowed_by):
    gate_json, table = kept_gate(tmp_path, ["E-BFMI 0.21 < 0.3"])
    check = enforce_gate(model, gate_json, table, {**GATE, **settings})
    assert not check["gate_passed"] and check["allowed_past_failed_gate"]
    assert check["allowed_by"] == allowed_by
    assert check["gate_failures"] == ["E-BFMI 0.21 < 0.3"]


# --------------------------------------------------------------------------------------
# Eta shrinkage
# --------------------------------------------------------------------------------------


def lkj_posterior(stds, n_subject=30, draws=40, seed=5):
    """A posterior as an LKJ fit stores it (no omega_<group>; the block's SDs in
    chol_eta_stds, groups cl then vc, chain fastest), with effects whose spread over subjects
    differs from those SDs."""
    rng = np.random.default_rng(seed)
    centre = {g: rng.normal(0.0, 0.1, (n_subject, 2)) for g in ("cl", "vc")}
    post = {
        f"eta_{g}": centre[g] + 0.05 * rng.standard_normal((2, draws, n_subject, 2))
        for g in ("cl", "vc")
    }
    post["chol_eta_stds"] = np.broadcast_to(stds, (2, draws, len(stds))).copy()
    return az.from_dict(
        posterior=post,
        dims={"eta_cl": ["subject", "enantiomer"], "eta_vc": ["subject", "enantiomer"]},
        coords={"subject": np.arange(n_subject), "enantiomer": ["S", "R"]},
    ), centre


def test_lkj_shrinkage_is_against_the_block_sds():
    stds = np.array([0.2, 0.3, 0.4, 0.5])  # (cl, S), (cl, R), (vc, S), (vc, R)
    idata, _ = lkj_posterior(stds)
    shrink = eta_shrinkage(idata)
    post = idata.posterior
    for k, (g, c) in enumerate([("cl", "S"), ("cl", "R"), ("vc", "S"), ("vc", "R")]):
        eta_mean = post[f"eta_{g}"].sel(enantiomer=c).mean(("chain", "draw"))
        expected = 1.0 - float(eta_mean.std("subject", ddof=1)) / stds[k]
        assert shrink[(g, c)] == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(list(shrink.values())).all()


def test_lkj_shrinkage_refuses_a_block_of_another_size():
    idata, _ = lkj_posterior(np.array([0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="chol_eta_stds holds 3 SDs"):
        eta_shrinkage(idata)
