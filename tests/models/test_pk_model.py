"""Population PK fitting: data preparation, the model's log density, the fit, the gate."""

from __future__ import annotations

import copy
import json

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytest
import scipy.stats as st
from conftest import REPO, evaluate, make_config, true_parameters

from ketamine_pmx.checks import (
    compare_with_truth,
    diagnostics_table,
    eta_shrinkage,
    gate,
    run_statistics,
)
from ketamine_pmx.config import load_schema
from ketamine_pmx.data import load_dataset
from ketamine_pmx.inference import fit_pk, load_idata, save_idata
from ketamine_pmx.models import (
    CENTRING_WEIGHTS,
    FitError,
    PKSpec,
    SpecError,
    bsv_groups,
    build_pk_model,
    censored_observations,
    effect_weights,
    empirical_bayes_start,
    load_pk_spec,
    log_ndtr,
    predict_ng_ml,
    prepare_pk_data,
    rich_subjects,
    validate_spec,
    with_bsv,
    with_parameter,
)
from ketamine_pmx.simulate import simulate_trial

MODELS = REPO / "models"
GROUPS = ("cl", "vc", "q", "vp", "cl_nk", "cl_hnk")  # the default model's BSV groups
GATE = {"rhat_max": 1.01, "ess_min": 400, "max_divergences": 0, "e_bfmi_min": 0.3}


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    config = make_config()
    sim = simulate_trial(config)
    paths = sim.write(tmp_path_factory.mktemp("trial"))
    table = load_dataset(paths["data"], config["data"]).table
    return table, sim.subjects


@pytest.fixture(scope="module")
def spec():
    return load_pk_spec(MODELS / "pk_2cmt_metab.yaml")


@pytest.fixture(scope="module")
def partial(spec):
    """The default model with its effects in separate free variables per group: rich subjects
    centred, sparse ones and q non-centred (the default before information weights and
    whitening, and the base of the parameterisation tests below)."""
    return with_bsv(
        spec,
        parameterisation="partial",
        centred_min_samples=8,
        noncentred_groups=["q"],
        whitening="none",
    )


def build(spec: PKSpec, data) -> pm.Model:
    """The model of ``spec`` for ``data`` as the fit builds it (with its empirical Bayes start)."""
    return build_pk_model(spec, data, empirical_bayes_start(spec, data))


def test_layout_reproduces_the_simulated_data_at_the_true_parameters(trial, spec):
    """Log residuals at the true individual parameters are the simulator's residual error.

    A wrong dose split, chain, level or subject mapping shows up as a shifted mean.
    """
    table, subjects = trial
    data = prepare_pk_data(table, spec)
    pred = predict_ng_ml(spec, data, true_parameters(subjects, data))
    obs = data.obs.assign(res=np.log(data.obs["DV"]) - np.log(pred))
    obs = obs[obs["BLQ"] == 0]
    stats = obs.groupby("ANALYTE")["res"].agg(["mean", "std", "size"])
    assert set(stats.index) == set(spec.analytes)
    assert (stats["mean"].abs() < 0.12).all(), stats
    assert stats["std"].between(0.08, 0.3).all(), stats


def test_model_gradient_matches_finite_differences(trial, spec):
    table, _ = trial
    data = prepare_pk_data(table, spec)
    model = build(spec, data)
    logp, dlogp = model.compile_logp(), model.compile_dlogp()
    point = model.initial_point()
    rng = np.random.default_rng(3)
    point = {k: v + 0.1 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    grad = dlogp(point)
    names = [v.name for v in model.value_vars]
    sizes = [np.size(point[n]) for n in names]
    offsets = np.cumsum([0, *sizes])
    checked = 0
    for k, name in enumerate(names):
        if name.startswith(("z_", "theta_")):
            continue  # thousands of them; the population parameters carry the checks
        for j in range(sizes[k]):
            h = 1e-5
            up, down = dict(point), dict(point)
            up[name] = np.array(point[name], float).copy()
            down[name] = up[name].copy()
            up[name].flat[j] += h
            down[name].flat[j] -= h
            fd = (logp(up) - logp(down)) / (2 * h)
            assert grad[offsets[k] + j] == pytest.approx(fd, rel=1e-4, abs=1e-4), (name, j)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("how", "correlation", "kept"),
    [
        ("centred", "none", []),
        ("partial", "none", []),
        ("partial", "enantiomer", []),
        ("partial", "enantiomer", ["vp", "cl_hnk"]),
    ],
)
def test_centred_parameterisations_are_the_same_model(trial, partial, how, correlation, kept):
    """Same etas, same model: the data term is identical and the priors differ only by the
    change of variables theta = mean + eta against eta = L z (log |d theta / d z| = log det L
    for every centred subject: sum of log omega, plus log sqrt(1 - rho^2) when S and R effects
    are correlated).
    """
    table, _ = trial
    assert tuple(bsv_groups(partial.parameters)) == GROUPS
    data = prepare_pk_data(table, partial)
    other = with_bsv(
        partial,
        parameterisation=how,
        centred_min_samples=8,
        correlation=correlation,
        noncentred_groups=kept,
        centring_weights={},  # every group but the kept ones centred
    )
    centred = effect_weights(other, data, None)[:, 0, GROUPS.index("cl")] > 0.0
    if how == "partial":  # the smoke trial's MDD patients are rich, the CRPS arms sparse
        arm = table.drop_duplicates("ID").set_index("ID").loc[data.subjects, "ARM"].to_numpy()
        assert centred.any() and not centred.all()
        assert (centred == (arm == "MDD")).all()
    else:
        assert centred.all()
    nc = build(with_bsv(partial, parameterisation="noncentred", correlation=correlation), data)
    ce = build(other, data)
    rng = np.random.default_rng(5)
    point = nc.initial_point()
    point = {k: v + 0.2 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    eta = evaluate(nc, [nc[f"eta_{g}"] for g in GROUPS], point)
    omega = evaluate(nc, [nc[f"omega_{g}"] for g in GROUPS], point)
    rho = [0.0] * len(GROUPS)
    if correlation == "enantiomer":  # eta_R = omega_R (rho z_S + sqrt(1 - rho^2) z_R)
        rho = evaluate(nc, [nc[f"rho_{g}"] for g in GROUPS], point)
        for g, e, w, r in zip(GROUPS, eta, omega, rho, strict=True):
            z = point[f"z_{g}"]
            np.testing.assert_allclose(e[:, 0], w[0] * z[:, 0], rtol=1e-12)
            expected = w[1] * (r * z[:, 0] + np.sqrt(1 - r**2) * z[:, 1])
            np.testing.assert_allclose(e[:, 1], expected, rtol=1e-12)
    # The same etas in the centred model: theta = (its mean) + eta for the centred subjects.
    ce_point = {k: v for k, v in point.items() if k in {v.name for v in ce.value_vars}}
    rich, sparse = np.flatnonzero(centred), np.flatnonzero(~centred)
    centring = [g for g in GROUPS if g not in kept]  # kept groups: non-centred, same z
    assert {f"theta_{g}" for g in kept}.isdisjoint(v.name for v in ce.value_vars)
    for g in centring:
        if sparse.size:
            ce_point[f"z_{g}"] = point[f"z_{g}"][sparse]
        ce_point[f"theta_{g}"] = np.zeros((rich.size, 2))
    means = evaluate(
        ce, [ce[f"theta_{g}"] - ce[f"eta_{g}"][rich] for g in centring], ce_point
    )  # theta - eta at theta = 0 is the mean (eta = theta - mean)
    for g, m in zip(centring, means, strict=True):
        ce_point[f"theta_{g}"] = m + eta[GROUPS.index(g)][rich]
    eta_ce = evaluate(ce, [ce[f"eta_{g}"] for g in GROUPS], ce_point)
    for a, b in zip(eta, eta_ce, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    loglik_nc = nc.compile_logp(vars=nc.observed_RVs)(point)
    loglik_ce = ce.compile_logp(vars=ce.observed_RVs)(ce_point)
    assert loglik_ce == pytest.approx(loglik_nc, rel=1e-10)
    jacobian = sum(
        rich.size * (np.log(w).sum() + 0.5 * np.log(1 - r**2))
        for g, w, r in zip(GROUPS, omega, rho, strict=True)
        if g not in kept
    )
    assert ce.compile_logp()(ce_point) == pytest.approx(
        nc.compile_logp()(point) - jacobian, rel=1e-10
    )
    assert "theta_cl" not in {v.name for v in nc.value_vars}


@pytest.mark.parametrize(("weight", "correlation"), [(0.3, "none"), (0.7, "enantiomer")])
def test_partially_centred_effects_are_the_same_model(trial, partial, weight, correlation):
    """bsv.centring_weights: the rich subjects' q effects drawn as theta~ ~ Normal(w mean,
    omega^w) with eta = omega^(1 - w) (theta~ - w mean) are the non-centred model's etas: the
    data term is identical and the priors differ by the Jacobian, w log omega per effect (and
    log sqrt(1 - rho^2) per subject with S and R correlated)."""
    table, _ = trial
    data = prepare_pk_data(table, partial)
    assert partial.spec["bsv"]["noncentred_groups"] == ["q"]  # the default: q non-centred
    nc = build(with_bsv(partial, correlation=correlation), data)
    vip = with_bsv(
        partial, noncentred_groups=[], centring_weights={"q": weight}, correlation=correlation
    )
    vip = build(vip, data)
    rich = rich_subjects(data, partial.spec["bsv"])
    assert rich.any() and not rich.all()
    rng = np.random.default_rng(23)
    point = nc.initial_point()
    point = {k: v + 0.2 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    eta, omega = evaluate(nc, [nc["eta_q"], nc["omega_q"]], point)
    mean = point["log_q_pop"][None, :] + 0.75 * np.log(data.wt / 70.0)[:, None]
    mapped = {**point, "z_q": point["z_q"][~rich]}
    mapped["theta_q"] = weight * mean[rich] + omega ** (weight - 1.0) * eta[rich]
    assert set(mapped) == {v.name for v in vip.value_vars}
    np.testing.assert_allclose(evaluate(vip, [vip["eta_q"]], mapped)[0], eta, rtol=1e-12)
    loglik = [m.compile_logp(vars=m.observed_RVs)(x) for m, x in ((nc, point), (vip, mapped))]
    assert loglik[1] == pytest.approx(loglik[0], rel=1e-12)
    jacobian = rich.sum() * weight * np.log(omega).sum()
    if correlation == "enantiomer":
        rho = evaluate(nc, [nc["rho_q"]], point)[0]
        jacobian += rich.sum() * 0.5 * np.log(1.0 - rho**2)
    assert vip.compile_logp()(mapped) == pytest.approx(
        nc.compile_logp()(point) - jacobian, rel=1e-12
    )


def test_each_parameterisation_is_one_table_entry_of_centring_weights(trial, partial):
    """bsv.parameterisation picks its centring weights (subject, chain, group) by name: 0
    non-centred, 1 centred, 1 for the rich subjects only (partial); noncentred_groups stay 0
    and centring_weights replace the 1. Information weights need the empirical Bayes start."""
    schema = load_schema("pk_model")["properties"]["bsv"]["properties"]
    assert set(CENTRING_WEIGHTS) == set(schema["parameterisation"]["enum"])
    data = prepare_pk_data(trial[0], partial)
    rich = rich_subjects(data, partial.spec["bsv"])
    q, vp = GROUPS.index("q"), GROUPS.index("vp")
    shape = (len(data.subjects), 2, len(GROUPS))
    expected = {"noncentred": np.zeros(shape), "centred": np.ones(shape)}
    expected["partial"] = np.where(rich[:, None, None], 1.0, np.zeros(shape))
    for how, weights in expected.items():
        weights[:, :, q] = 0.0  # noncentred_groups: [q]
        weights[:, :, vp] = np.where(weights[:, :, vp] > 0, 0.5, 0.0)
        spec = with_bsv(partial, parameterisation=how, centring_weights={"vp": 0.5})
        np.testing.assert_array_equal(effect_weights(spec, data, None), weights, err_msg=how)
    information = with_bsv(partial, parameterisation="information", noncentred_groups=[])
    with pytest.raises(ValueError, match="empirical Bayes start"):
        effect_weights(information, data, None)


def test_a_model_with_joint_effects_needs_its_empirical_bayes_start(trial, spec):
    data = prepare_pk_data(trial[0], spec)
    with pytest.raises(ValueError, match=r"pass empirical_bayes_start\(spec, data\)"):
        build_pk_model(spec, data, None)


@pytest.mark.parametrize(
    ("bsv", "message"),
    [
        ({"centring_weights": {"v_nk": 0.5}}, "not a BSV group"),
        ({"centring_weights": {"q": 0.5}}, "also in bsv.noncentred_groups"),
    ],
)
def test_centring_weights_are_refused_where_they_cannot_apply(partial, bsv, message):
    with pytest.raises(SpecError, match=rf"bsv\.centring_weights\.\w+: .*{message}"):
        with_bsv(partial, **bsv)


def per_fraction(spec: PKSpec, name: str = "cl_hnk", per: str | None = "fm_hnk") -> PKSpec:
    """``spec`` with parameter ``name`` sampled per the fraction ``per`` (None: not)."""
    return with_parameter(spec, name, sample_per=per)


def point_per_fm_hnk(model, seed: int) -> tuple[dict, dict, np.ndarray]:
    """A random point of ``model`` (cl_hnk sampled itself), the same point with the typical
    cl_hnk written per fm_hnk (log_cl_hnk_per_fm_hnk_pop), and log fm_hnk."""
    rng = np.random.default_rng(seed)
    point = model.initial_point()
    point = {k: v + 0.2 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    log_fm = -np.log1p(np.exp(-point["logit_fm_hnk_pop"]))
    mapped = dict(point)
    mapped["log_cl_hnk_per_fm_hnk_pop"] = mapped.pop("log_cl_hnk_pop") - log_fm
    return point, mapped, log_fm


@pytest.mark.parametrize("how", ["partial", "noncentred"])
def test_sampling_a_clearance_per_its_fraction_is_the_same_model(trial, partial, how):
    """cl_hnk sampled as log(cl_hnk / fm_hnk) (population and centred subjects) is the same
    posterior: at corresponding points the etas, the individual clearances and the whole log
    density (priors included: the shift has a unit Jacobian) agree."""
    table, _ = trial
    data = prepare_pk_data(table, partial)
    # (centred_scale parameter: apparent centring would shift theta_cl_hnk in both models)
    plain = with_bsv(
        per_fraction(partial, per=None), parameterisation=how, centred_scale="parameter"
    )
    plain = build(plain, data)
    per = with_bsv(per_fraction(partial), parameterisation=how, centred_scale="parameter")
    per = build(per, data)
    names = {v.name for v in per.value_vars}
    assert "log_cl_hnk_per_fm_hnk_pop" in names and "log_cl_hnk_pop" not in names
    point, mapped, log_fm = point_per_fm_hnk(plain, seed=11)
    if how == "partial":
        mapped["theta_cl_hnk"] = point["theta_cl_hnk"] - log_fm[None, :]
    assert set(mapped) == names
    a = evaluate(plain, [plain["eta_cl_hnk"], plain["log_cl_hnk_pop"]], point)
    b = evaluate(per, [per["eta_cl_hnk"], per["log_cl_hnk_pop"]], mapped)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    assert per.compile_logp()(mapped) == pytest.approx(plain.compile_logp()(point), rel=1e-12)


def test_apparent_centring_samples_the_clearances_the_data_identify(trial, partial):
    """bsv.centred_scale: apparent is the same model (same etas: same log density, priors
    included), and a centred subject's free values are log(cl_f + cl_o), log(cl_nk / fm_nk)
    and log(cl_hnk / (fm_nk fm_hnk)), computed here from the parameters themselves."""
    table, _ = trial
    data = prepare_pk_data(table, partial)
    assert partial.spec["bsv"]["centred_scale"] == "apparent"  # the default model's
    plain = with_bsv(per_fraction(partial, per=None), centred_scale="parameter")
    plain = build(plain, data)
    app = build(partial, data)  # and cl_hnk per fm_hnk at the population level too
    point, mapped, log_fm_hnk = point_per_fm_hnk(plain, seed=13)
    groups = ("cl", "cl_nk", "cl_hnk")
    eta = dict(
        zip(groups, evaluate(plain, [plain[f"eta_{g}"] for g in groups], point), strict=True)
    )
    rich = np.flatnonzero(rich_subjects(data, partial.spec["bsv"]))
    for g in groups:
        mapped[f"theta_{g}"] = np.zeros((rich.size, 2))
    means = evaluate(app, [app[f"theta_{g}"] - app[f"eta_{g}"][rich] for g in groups], mapped)
    for g, m in zip(groups, means, strict=True):
        mapped[f"theta_{g}"] = m + eta[g][rich]
    assert app.compile_logp()(mapped) == pytest.approx(plain.compile_logp()(point), rel=1e-12)
    # the free values are the apparent clearances of each centred subject
    log_wt = 0.75 * np.log(data.wt / 70.0)[:, None]
    cyp = np.concatenate([[0.0], point["e_cyp2b6"]])
    cls = np.array([["NM", "IM", "PM"].index(c) for c in data.cyp_class])
    log_cl_f = point["log_cl_f_pop"] + log_wt + cyp[cls][:, None] + eta["cl"]
    log_cl_o = point["log_cl_o_pop"] + log_wt + eta["cl"]
    log_fm_nk = log_cl_f - np.logaddexp(log_cl_f, log_cl_o)
    log_cl_nk = point["log_cl_nk_pop"] + log_wt + eta["cl_nk"]
    log_cl_hnk = point["log_cl_hnk_pop"] + log_wt + eta["cl_hnk"]
    expected = {
        "cl": np.logaddexp(log_cl_f, log_cl_o),
        "cl_nk": log_cl_nk - log_fm_nk,
        "cl_hnk": log_cl_hnk - log_fm_nk - log_fm_hnk,
    }
    for g in groups:
        np.testing.assert_allclose(mapped[f"theta_{g}"], expected[g][rich], rtol=1e-12)


def test_sampling_two_clearances_as_total_and_share_is_the_same_model(trial, spec):
    """``sample_with``: typical cl_f and cl_o drawn as log(cl_f + cl_o) and logit of cl_f's
    share. At corresponding points the typical values and the whole log density agree (priors
    included: unit Jacobian, and the factorised prior is the two log-normals'); the prior's
    draws of the two clearances keep their log-normal medians and SDs."""
    table, _ = trial
    data = prepare_pk_data(table, spec)
    plain = build(with_parameter(spec, "cl_f", sample_with=None), data)
    pair = build(with_parameter(spec, "cl_f", sample_with="cl_o"), data)
    names = {v.name for v in pair.value_vars}
    assert {"log_cl_f_cl_o_total_pop", "logit_cl_f_share_pop"} <= names
    assert not {"log_cl_f_pop", "log_cl_o_pop"} & names
    rng = np.random.default_rng(17)
    for _ in range(3):
        point = plain.initial_point()
        point = {k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
        a, b = point.pop("log_cl_f_pop"), point.pop("log_cl_o_pop")
        mapped = {
            **point,
            "log_cl_f_cl_o_total_pop": np.logaddexp(a, b),
            "logit_cl_f_share_pop": a - b,
        }
        point.update(log_cl_f_pop=a, log_cl_o_pop=b)
        got = evaluate(pair, [pair["log_cl_f_pop"], pair["log_cl_o_pop"]], mapped)
        np.testing.assert_allclose(got, [a, b], rtol=1e-12)
        assert pair.compile_logp()(mapped) == pytest.approx(plain.compile_logp()(point), rel=1e-12)
    prior = pm.draw([pair["log_cl_f_pop"], pair["log_cl_o_pop"]], draws=40000, random_seed=5)
    for name, draws in zip(("cl_f", "cl_o"), prior, strict=True):
        expected = np.log([spec.typical(name, c) for c in spec.chains])
        np.testing.assert_allclose(draws.mean(axis=0), expected, atol=0.03)
        np.testing.assert_allclose(draws.std(axis=0), spec.parameters[name]["prior_sd"], rtol=0.03)


@pytest.mark.parametrize(
    ("name", "other", "message"),
    [
        ("cl_f", "cl_nope", "not a parameter"),
        ("cl_f", "vc", "'vc' is not an estimated clearance"),
        ("cl_f", "cl_f", "cannot be sampled with itself"),
        ("cl_nk", "cl_hnk", "'cl_hnk' is sampled per a fraction"),
    ],
)
def test_sample_with_is_refused_where_it_cannot_apply(spec, name, other, message):
    with pytest.raises(SpecError, match=rf"parameters\.{name}\.sample_with: .*{message}"):
        with_parameter(spec, name, sample_with=other)


def test_a_clearance_is_sampled_with_one_other_only(spec):
    paired = with_parameter(spec, "cl_f", sample_with="cl_o")
    with pytest.raises(SpecError, match=r"'cl_o' is already sampled with 'cl_f'"):
        with_parameter(paired, "cl_nk", sample_with="cl_o")


@pytest.mark.parametrize(
    ("model", "change", "message"),
    [
        ("pk_1cmt_oral", {}, "need the metabolite NK"),
        ("pk_2cmt_metab", {"cl_o": {"bsv_group": "cl_other"}}, "cl_f and cl_o in one BSV group"),
    ],
)
def test_apparent_centring_is_refused_where_it_cannot_apply(model, change, message):
    raw = copy.deepcopy(load_pk_spec(MODELS / f"{model}.yaml").spec)
    raw.setdefault("bsv", {})["centred_scale"] = "apparent"
    for name, keys in change.items():
        raw["parameters"][name].update(keys)
    with pytest.raises(SpecError, match=rf"bsv\.centred_scale: .*{message}"):
        validate_spec(raw, "models/x.yaml")


@pytest.mark.parametrize(
    ("name", "per", "message"),
    [
        ("cl_hnk", "fm_nope", "not a parameter"),
        ("cl_hnk", "cl_nk", "must be an estimated fraction"),
        ("vc", "fm_hnk", "only an estimated clearance"),
        ("cl_o", "fm_hnk", "shares the subject effect of 'cl_f'"),
    ],
)
def test_sample_per_is_refused_where_it_cannot_apply(spec, name, per, message):
    with pytest.raises(SpecError, match=rf"parameters\.{name}\.sample_per: .*{message}"):
        per_fraction(spec, name, per)


def test_enantiomer_correlation_needs_two_enantiomers():
    raw = copy.deepcopy(load_pk_spec(MODELS / "pk_racemic_2cmt_metab.yaml").spec)
    raw["bsv"]["correlation"] = "enantiomer"
    with pytest.raises(SpecError, match=r"bsv\.correlation.*one chain"):
        validate_spec(raw, "models/x.yaml")


def test_noncentred_groups_must_be_bsv_groups(partial):
    raw = copy.deepcopy(partial.spec)
    raw["bsv"]["noncentred_groups"] = ["q", "v_nk"]  # v_nk is fixed: no subject effects
    with pytest.raises(SpecError, match=r"bsv\.noncentred_groups: 'v_nk' is not a BSV group"):
        validate_spec(raw, "models/x.yaml")


def test_centred_effects_need_an_uncorrelated_block(partial):
    raw = copy.deepcopy(partial.spec)
    raw["bsv"].update(parameterisation="partial", correlation="lkj")
    with pytest.raises(SpecError, match=r"bsv\.parameterisation.*lkj"):
        validate_spec(raw, "models/x.yaml")


def test_blq_rows_contribute_the_normal_cdf(spec):
    rows = [
        (1, 0.0, 1, "KET", 35.0, 52.5, np.nan, 1, np.nan, 0),
        (1, 1.0, 0, "S_KET", 0.0, 0.0, 50.0, 0, 1.0, 0),
        (1, 30.0, 0, "S_KET", 0.0, 0.0, 1.0, 0, 1.0, 1),
    ]
    cols = ["ID", "TIME", "EVID", "ANALYTE", "AMT", "RATE", "DV", "MDV", "LLOQ", "BLQ"]
    table = pd.DataFrame(rows, columns=cols).assign(WT=70.0, CYP2B6_CLASS="NM")
    data = prepare_pk_data(table, spec)
    value, lower = censored_observations(spec, data)
    assert lower[0] == -np.inf and lower[1] == value[1] == 0.0  # log(LLOQ = 1)
    model = build(spec, data)
    point = model.initial_point()
    pointwise = model.compile_fn(model.logp(vars=model.observed_RVs, sum=False)[0])(point)
    sd = np.exp(point["sigma_prop_log__"])[0]
    # The prediction at this point (70 kg, NM; the chains start at the subject's empirical Bayes
    # estimates, so its etas are those at the point), by the numpy reference.
    ind = {
        name: np.exp(point[f"log_{name}_pop"])[None, :]
        for name in ("cl_f", "cl_o", "vc", "q", "vp", "cl_nk")
    }
    ind["fm_hnk"] = 1 / (1 + np.exp(-point["logit_fm_hnk_pop"]))[None, :]
    # the spec samples cl_hnk per fm_hnk (sample_per)
    ind["cl_hnk"] = np.exp(point["log_cl_hnk_per_fm_hnk_pop"])[None, :] * ind["fm_hnk"]
    groups = {name: par.get("bsv_group") or name for name, par in spec.parameters.items()}
    etas = {g: model[f"eta_{g}"] for g in set(groups.values()) if f"eta_{g}" in model}
    etas = dict(zip(etas, evaluate(model, list(etas.values()), point), strict=True))
    assert np.abs(np.concatenate(list(etas.values()))).max() > 0.0
    for name in ind:
        if spec.parameters[name]["bsv"]:
            ind[name] = ind[name] * np.exp(etas[groups[name]])
    ind["v_nk"] = np.array([[250.0, 250.0]])
    ind["v_hnk"] = np.array([[115.0, 115.0]])
    pred = predict_ng_ml(spec, data, ind)
    expected = [
        st.norm.logpdf(np.log(50.0), np.log(pred[0]), sd),
        st.norm.logcdf(0.0, np.log(pred[1]), sd),
    ]
    np.testing.assert_allclose(pointwise, expected, rtol=1e-6)


def test_log_ndtr_matches_mpmath_in_value_and_gradient():
    import mpmath as mp
    import pytensor
    import pytensor.tensor as pt

    z = pt.dvector("z")
    f = pytensor.function([z], [log_ndtr(z), pytensor.grad(log_ndtr(z).sum(), z)])
    grid = np.concatenate(
        [-np.logspace(-3, 3, 120), [0.0], np.logspace(-3, 1.5, 60), [-35.001, -35.0, -34.999]]
    )
    value, grad = f(grid)
    mp.mp.dps = 600  # log Phi(14) = -Phi(-14) ~ -1e-44 needs Phi(14) to ~60 digits
    for zi, v, g in zip(grid, value, grad, strict=True):
        cdf = mp.ncdf(mp.mpf(zi))
        exact_v, exact_g = float(mp.log(cdf)), float(mp.npdf(mp.mpf(zi)) / cdf)
        if abs(exact_v) > 1e-300:
            assert abs(v - exact_v) <= 1e-12 * abs(exact_v), (zi, v, exact_v)
        assert abs(g - exact_g) <= 1e-12 * abs(exact_g), (zi, g, exact_g)


def _uncacheable_numba_nodes(output, inputs):
    """Nodes of a NUMBA-compiled graph that numba cannot cache (no cache key)."""
    import pytensor
    from pytensor.link.numba.dispatch.basic import numba_funcify_and_cache_key

    f = pytensor.function(inputs, output, mode="NUMBA")
    nodes = f.maker.fgraph.toposort()
    return [n for n in nodes if numba_funcify_and_cache_key(n.op, node=n)[1] is None]


def test_the_censored_likelihood_compiles_to_cacheable_numba():
    """One uncacheable node makes numba recompile the model's whole log density in every
    process; PyMC's normal log CDF (erfcx, called through a pointer into scipy) is one."""
    import pytensor.tensor as pt

    z = pt.dvector("z")
    assert _uncacheable_numba_nodes(log_ndtr(z).sum(), [z]) == []
    mu, bound = pt.dvector("mu"), pt.dvector("bound")
    pymc_cdf = pm.logcdf(pm.Normal.dist(mu=mu, sigma=1.0), bound).sum()
    assert _uncacheable_numba_nodes(pymc_cdf, [mu, bound]) != []


def test_log_scale_error_refuses_nonpositive_concentrations(trial, spec):
    table = trial[0].copy()
    first = table.index[(table["EVID"] == 0) & (table["ANALYTE"] == "S_KET") & (table["BLQ"] == 0)]
    table.loc[first[0], "DV"] = 0.0
    with pytest.raises(FitError, match="DV > 0"):
        censored_observations(spec, prepare_pk_data(table, spec))


def test_a_model_without_its_analytes_is_refused(trial, spec):
    table = trial[0]
    table = table[~table["ANALYTE"].isin(spec.analytes) | (table["EVID"] == 1)]
    with pytest.raises(FitError, match="has none of them"):
        prepare_pk_data(table, spec)


def _table(rhat=1.0, ess=1000.0):
    return pd.DataFrame(
        {
            "parameter": ["log_cl_f_pop[S]", "omega_cl[S]", "shrinkage_eta_cl[S]"],
            "r_hat": [1.001, rhat, np.nan],
            "ess_bulk": [2000.0, ess, np.nan],
            "ess_tail": [2000.0, ess, np.nan],
        }
    )


def test_gate_passes_a_good_fit_and_names_every_failure():
    good = {"divergences": 0, "e_bfmi_min": 0.9}
    assert gate(_table(), good, GATE) == []
    failures = gate(_table(rhat=1.05, ess=120.0), {"divergences": 3, "e_bfmi_min": 0.1}, GATE)
    text = "\n".join(failures)
    assert len(failures) == 5
    assert "R-hat 1.050" in text and "omega_cl[S]" in text and "ess_bulk 120" in text
    assert "3 divergent" in text and "target_accept" in text and "E-BFMI 0.10" in text


@pytest.fixture(scope="module")
def smoke_fit(trial, spec):
    sampler = {
        "backend": "nutpie",
        "draws": 150,
        "tune": 150,
        "chains": 2,
        "cores": 2,
        "target_accept": 0.9,
        "low_rank_mass_matrix": True,
    }
    return fit_pk(trial[0], spec, sampler, seed=11)


def test_fit_writes_inferencedata_with_named_dims_and_loglik(smoke_fit, spec, tmp_path):
    idata, data = smoke_fit
    post = idata.posterior
    assert {"posterior", "log_likelihood", "constant_data", "observed_data", "sample_stats"} <= set(
        idata.groups()
    )
    assert post["log_cl_f_pop"].dims == ("chain", "draw", "enantiomer")
    assert list(post["enantiomer"].values) == ["S", "R"]
    assert post["eta_cl"].dims == ("chain", "draw", "subject", "enantiomer")
    assert not any(v.startswith(("z_", "theta_")) for v in post.data_vars)
    loglik = idata.log_likelihood["y"]
    assert loglik.dims == ("chain", "draw", "obs") and loglik.sizes["obs"] == len(data.obs)
    assert np.isfinite(loglik.values).all()
    assert set(idata.constant_data["obs_analyte"].values) == set(spec.analytes)
    assert post.attrs["spec_sha256"] == spec.sha256 and post.attrs["sampling_seconds"] > 0
    settings = json.loads(post.attrs["sampler_settings"])
    assert (settings["draws"], settings["target_accept"]) == (150, 0.9)
    path = tmp_path / "posterior.nc"
    save_idata(idata, path)
    again = load_idata(path, spec)
    np.testing.assert_array_equal(again.posterior["omega_cl"], post["omega_cl"])
    other = load_pk_spec(MODELS / "pk_1cmt_metab.yaml")
    with pytest.raises(FitError, match="refit"):
        load_idata(path, other)


def test_diagnostics_table_and_a_short_run_fails_the_gate(smoke_fit):
    idata, _ = smoke_fit
    table = diagnostics_table(idata)
    assert {"parameter", "mean", "q5", "q95", "r_hat", "ess_bulk", "ess_tail"} <= set(table)
    assert {"shrinkage_eta_cl[S]", "shrinkage_eta_cl[R]"} <= set(table["parameter"])
    shrink = eta_shrinkage(idata)
    assert all(-1 < v < 1 for v in shrink.values())
    stats = run_statistics(idata)
    assert stats["chains"] == 2 and stats["draws"] == 150
    # 2 x 150 draws cannot reach 400 effective samples: the gate must say so.
    failures = gate(table, stats, GATE)
    assert any(f.startswith("ess_bulk") for f in failures)


def test_compare_with_truth_reports_the_population_and_the_realised_values():
    import arviz as az

    rng = np.random.default_rng(3)
    post = {
        "log_cl_pop": np.log(10.0) + 0.05 * rng.standard_normal((2, 2000, 2)),
        "omega_cl": 0.3 + 0.01 * rng.standard_normal((2, 2000, 2)),
    }
    idata = az.from_dict(
        posterior=post, dims={k: ["chain_"] for k in post}, coords={"chain_": ["S", "R"]}
    )
    truth = {"log_cl_pop[S]": 10.0, "log_cl_pop[R]": 11.0, "omega_cl[S]": 0.3, "absent[S]": 1.0}
    sample = {"log_cl_pop[S]": 9.5, "log_cl_pop[R]": 10.2, "omega_cl[S]": 0.31}
    table = compare_with_truth(idata, truth, sample_truth=sample).set_index("parameter")
    assert list(table.index) == ["cl_pop[S]", "cl_pop[R]", "omega_cl[S]"]  # absent: skipped
    # exp of N(log 10, 0.05): the 90% interval is about 9.2 to 10.9
    assert table["inside"].tolist() == [True, False, True]
    assert table["inside_sample"].tolist() == [True, True, True]
    assert table.loc["cl_pop[R]", "sample_truth"] == 10.2
    assert table.loc["cl_pop[S]", "q5"] == pytest.approx(10 * np.exp(-1.645 * 0.05), rel=0.01)
    assert "sample_truth" not in compare_with_truth(idata, truth).columns


# --- flags: parameters at a boundary, variability the data do not support -----------------

TYPICAL = {"log_cl_f_pop[S]": 76.0, "log_cl_f_pop[R]": 72.0, "log_cl_o_pop[S]": 19.0}
TYPICAL |= {"log_cl_o_pop[R]": 18.0}


def _posterior(seed=4, **variables):
    """A constructed posterior: 2 chains x 1000 draws of each (S, R) variable, ``prior_typical``
    recorded as a fit records it; a healthy one unless a variable says otherwise."""
    import arviz as az

    rng = np.random.default_rng(seed)
    shape = (2, 1000, 2)
    healthy = {
        "log_cl_f_pop": np.log([76.0, 70.0]) + 0.03 * rng.standard_normal(shape),
        "log_cl_o_pop": np.log([19.0, 17.0]) + 0.05 * rng.standard_normal(shape),
        "logit_fm_hnk_pop": 1.1 + 0.1 * rng.standard_normal(shape),
        "omega_cl": 0.25 + 0.02 * rng.standard_normal(shape),
        "omega_q": 0.15 + 0.03 * rng.standard_normal(shape),  # small, but supported
    }
    draws = {k: v(rng, shape) if callable(v) else v for k, v in variables.items()}
    post = healthy | draws
    idata = az.from_dict(
        posterior=post,
        dims={k: ["enantiomer"] for k in post},
        coords={"enantiomer": ["S", "R"]},
        sample_stats={"diverging": np.zeros((2, 1000), bool)},
    )
    idata.posterior.attrs["prior_typical"] = json.dumps(TYPICAL)
    return idata


def test_parameters_at_a_boundary_of_their_support_are_flagged():
    from ketamine_pmx.checks import parameter_flags

    assert parameter_flags(_posterior()) == {}  # healthy: silent
    # the fit: cl_o pushed to 0.6 L/h (prior centre 19), 0.993 of cl through NK
    at_edge = _posterior(
        log_cl_o_pop=lambda g, s: np.log([0.6, 2.6]) + 0.1 * g.standard_normal(s),
        logit_fm_hnk_pop=lambda g, s: np.array([-4.0, 0.5]) + 0.1 * g.standard_normal(s),
    )
    flags = parameter_flags(at_edge)
    assert set(flags) == {"log_cl_o_pop[S]", "fm_nk_pop[S]", "fm_nk_pop[R]", "logit_fm_hnk_pop[S]"}
    assert flags["log_cl_o_pop[S]"].startswith("near 0: median 0.")
    assert "< 0.1 x the prior's typical value 19 " in flags["log_cl_o_pop[S]"]
    assert flags["fm_nk_pop[S]"].startswith("near 1: median 0.992")
    assert flags["fm_nk_pop[R]"].startswith("near 1: median 0.964")  # 70 / (70 + 2.6)
    assert flags["logit_fm_hnk_pop[S]"].startswith("near 0: median 0.018")
    # cl_o 2.6 L/h is 0.14 x its prior centre: above the default ratio, below a stricter one
    assert "log_cl_o_pop[R]" in parameter_flags(at_edge, {"boundary_ratio": 0.2})
    assert "fm_nk_pop[R]" not in parameter_flags(at_edge, {"boundary_fraction": 0.02})


def test_an_omega_piled_at_zero_proposes_the_model_without_that_variability():
    from ketamine_pmx.checks import bsv_advice, parameter_flags

    healthy = _posterior()
    assert bsv_advice(healthy, parameter_flags(healthy)) == []
    # omega_q piled at 0 in both enantiomers (the truth had none), omega_vp reaching down to 0
    # in both (as the fit of such a truth gives: mean 0.1, 5% quantile 0.01-0.02, about a
    # third of its mass below 0.1); omega_vc only in R
    piled = _posterior(
        omega_q=lambda g, s: np.abs(0.04 * g.standard_normal(s)),
        omega_vp=lambda g, s: np.abs(0.14 + 0.06 * g.standard_normal(s)),
        omega_vc=lambda g, s: np.abs(
            np.array([0.25, 0.04]) + np.array([0.02, 0.04]) * g.standard_normal(s)
        ),
    )
    flags = parameter_flags(piled)
    assert set(flags) == {"omega_q[S]", "omega_q[R]", "omega_vp[S]", "omega_vp[R]", "omega_vc[R]"}
    assert flags["omega_q[S]"].startswith("posterior mass near 0: P(omega < 0.1) = 0.9")
    assert flags["omega_q[S]"].endswith("consider removing BSV on q")
    assert flags["omega_vp[R]"].startswith("not bounded away from 0: relative SE 0.4")
    advice = bsv_advice(piled, flags)
    assert len(advice) == 1 and "variability on q, vp (bsv: false" in advice[0]
    assert "vc" not in advice[0]  # flagged in R only: one variability for both enantiomers
    # the thresholds are the config's
    assert set(parameter_flags(piled, {"omega_min": 0.01, "omega_rse_max": 0.9})) == set()


def test_diagnose_writes_the_flags_and_the_proposal_to_both_files(tmp_path):
    from ketamine_pmx.checks import diagnose, gate_message, gate_notes

    rules = GATE | {"omega_min": 0.1}
    csv, gate_json = tmp_path / "diagnostics.csv", tmp_path / "gate.json"
    diagnose(_posterior(), rules, csv, gate_json)
    table, result = pd.read_csv(csv).fillna(""), json.loads(gate_json.read_text())
    assert (table["flag"] == "").all() and result["flags"] == [] and result["advice"] == []
    assert {"fm_nk_pop[S]", "fm_nk_pop[R]"} <= set(table["parameter"])  # the derived share
    bad = _posterior(
        log_cl_o_pop=lambda g, s: np.log([0.6, 17.0]) + 0.1 * g.standard_normal(s),
        omega_q=lambda g, s: np.abs(0.04 * g.standard_normal(s)),
    )
    failures = diagnose(bad, rules, csv, gate_json)
    table = pd.read_csv(csv).fillna("").set_index("parameter")
    result = json.loads(gate_json.read_text())
    assert table.loc["log_cl_o_pop[S]", "flag"].startswith("near 0")
    assert table.loc["omega_q[R]", "flag"].startswith("posterior mass near 0")
    assert table.loc["log_cl_o_pop[R]", "flag"] == ""
    assert len(result["flags"]) == 4 and result["flags"][0].startswith("log_cl_o_pop[S]: near 0")
    assert "omega_q" in result["advice"][0]
    # flags inform; they do not fail the gate (2000 independent draws pass it)
    assert failures == [] and result["gate_passed"]
    message = gate_message("pk_2cmt_metab", ["R-hat 1.09 > 1.01 (omega_q[S])"], gate_notes(result))
    assert "flag omega_q[S]: posterior mass near 0" in message
    assert "proposal: remove between-subject variability on q" in message


def test_a_derived_share_is_reported_but_not_gated():
    table = pd.concat(
        [
            _table(),
            pd.DataFrame(
                {
                    "parameter": ["fm_nk_pop[S]"],
                    "r_hat": [1.2],
                    "ess_bulk": [50.0],
                    "ess_tail": [50.0],
                }
            ),
        ],
        ignore_index=True,
    )
    assert gate(table, {"divergences": 0, "e_bfmi_min": 0.9}, GATE) == []


def test_a_fit_records_the_prior_centres_the_boundary_rule_needs(spec):
    from ketamine_pmx.inference import prior_typical

    centres = prior_typical(spec)
    assert centres["log_cl_o_pop[S]"] == 19.0 and centres["log_cl_hnk_pop[R]"] == 76.0
    assert not any(k.startswith(("log_v_nk", "log_fm_hnk")) for k in centres)  # fixed; fraction


def test_posterior_files_of_two_runs_of_one_config_are_byte_identical(tmp_path):
    """Timings and creation times stay in memory (and the fit's log), not in the file: two fits
    that drew the same numbers at different speeds write the same bytes."""
    import hashlib

    import xarray as xr

    from ketamine_pmx.inference import RUN_ATTRS, run_timings

    def fit(seconds: float, created: str) -> az.InferenceData:
        post = xr.Dataset({"x": (("chain", "draw"), np.arange(8.0).reshape(2, 4))})
        post.attrs.update(model="m", created_at=created, sampling_seconds=seconds)
        stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((2, 4), bool))})
        stats.attrs["created_at"] = created
        return az.InferenceData(posterior=post, sample_stats=stats)

    first, second = fit(1.5, "2026-01-01T00:00:00"), fit(9.25, "2026-01-02T00:00:00")
    paths = [tmp_path / "a.nc", tmp_path / "b.nc"]
    for idata, path in zip((first, second), paths, strict=True):
        save_idata(idata, path)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    assert run_timings(first) == {"created_at": "2026-01-01T00:00:00", "sampling_seconds": 1.5}
    loaded = load_idata(paths[0])
    assert not set(RUN_ATTRS) & set(loaded.posterior.attrs)
    assert loaded.posterior.attrs["model"] == "m"
