r"""Exact solutions of linear compartment chains: numpy reference and PyTensor, vectorised.

The system (one *chain*, e.g. one enantiomer; amounts A in mg, volumes in L, clearances in
L/h, time in h)::

    dA_d/dt  = -ka A_d                                    (optional depot, oral doses)
    dA_c/dt  = F ka A_d + In(t) - (k10 + k12 + k13) A_c + k21 A_p + k31 A_p2
    dA_p/dt  = k12 A_c - k21 A_p                           (2- and 3-compartment parents)
    dA_p2/dt = k13 A_c - k31 A_p2                          (3-compartment parents)
    dA_1/dt  = r_1 k_f1 A_c     - k_1 A_1                  (metabolite 1)
    dA_j/dt  = r_j k_fj A_(j-1) - k_j A_j                  (metabolite j = 2, 3)

with k10 = cl/vc, k12 = q/vc, k21 = q/vp, k13 = q2/vc, k31 = q2/vp2, k_j = cl_m_j / v_m_j,
k_f1 = cl_f_1 / vc and k_fj = cl_f_j / v_m_(j-1) (or k_fj = fm_j k_(j-1) when a formation is
given as a fraction ``fm``), r_j the molar mass ratio of metabolite to precursor, ``cl`` the
parent's total clearance. C_0 = A_c / vc * 1000 and C_j = A_j / v_m_j * 1000 (ng/mL). Doses
(bolus, zero-order infusion, or depot bolus with bioavailability ``f_bio``) superpose. With
g(t) = sum_i w_i exp(-lambda_i t) the parent's unit-impulse response (:func:`np_disposition`),
chain level j answers a unit central bolus with::

    A_j(t) = C_j sum_i w_i E(t; lambda_i, k_1, ..., k_j),      C_j = prod_(l <= j) r_l k_fl

where E(t; x_0..x_n) = exp(-x_0 t) * ... * exp(-x_n t) (convolution) is (-1)^n times the
divided difference of exp(-x t) over the nodes (:func:`np_exp_conv`); a depot adds the node ka,
an infusion the node 0, and after an infusion of length T::

    G(t) - G(t - T) = sum_(r=0..n) E(T; 0, x_0..x_r) E(t - T; x_r..x_n)

a sum of positive terms (the chain's end-of-infusion state, propagated). E is evaluated without
cancellation at every node configuration, coincident nodes included: sorted nodes, a Taylor
series for runs of close nodes and the divided-difference recursion for the others, chosen
with a "double where" so no inf or NaN reaches the gradient (values to about 1e-15, gradients
to about 1e-13 relative; ``tests/test_pk.py`` checks both against mpmath). In PyTensor each E
and its derivatives are one fused element-wise kernel, shared by every chain level of one
(subject, time since dose, infusion), so every backend (C, numba, JAX) runs it and the graph
compiles in seconds. :func:`np_conc_ng_ml` and :func:`pt_conc_ng_ml` share one implementation.
The derivation, the stability argument and the kernel layout are in ``docs/pk_solutions.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Runs of sorted nodes with scaled spread t * (x_max - x_min) below this use the Taylor series.
TAYLOR_SPREAD = 0.25
#: Highest power kept in the Taylor series (truncation < TAYLOR_SPREAD^12 / 12! * e, ~3e-16).
TAYLOR_TERMS = 11
#: Dose routes accepted by :func:`build_layout`.
ROUTES = ("central", "depot")
#: Most metabolites a chain may carry.
MAX_METABOLITES = 3
#: mg/L -> ng/mL.
NG_ML_PER_MG_L = 1000.0

_INV_FACTORIAL = tuple(1.0 / math.factorial(k) for k in range(TAYLOR_TERMS + 64))


# --------------------------------------------------------------------------------------
# Array back-ends: one implementation, numpy or PyTensor
# --------------------------------------------------------------------------------------


class _Backend:
    """The few operations where numpy, PyTensor tensors and PyTensor scalars differ."""

    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            self.xp = np
        elif name == "pytensor":
            import pytensor.tensor as pt

            self.xp = pt
        else:  # "scalar": pytensor.scalar, to build the fused E kernels
            import pytensor.scalar as ps

            self.xp = ps

    def asarray(self, x: Any) -> Any:
        if self.name == "numpy":
            return np.asarray(x, dtype=float)
        if self.name == "scalar":
            return x
        from pytensor.graph.basic import Variable

        if isinstance(x, Variable):  # symbolic: computed in float64 (never float32)
            return self.xp.cast(self.xp.as_tensor_variable(x), "float64")
        # Data become constants of the compiled function: contiguous, since numba keeps a
        # strided constant as a "dynamic global", which makes the function uncacheable.
        return self.xp.as_tensor_variable(np.asarray(x, dtype=np.float64, order="C"))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.xp.switch(cond, a, b) if self.name == "scalar" else self.xp.where(cond, a, b)

    def segment_sum(self, values: Any, index: np.ndarray, size: int) -> Any:
        if self.name == "numpy":
            return np.bincount(index, weights=values, minlength=size).astype(float)
        return self.xp.zeros(size)[index].inc(values)

    def per_subject(self, x: Any, n_subject: int, name: str) -> Any:
        """A parameter as an array of shape (n_subject,) (scalars are broadcast)."""
        arr = self.asarray(x)
        if arr.ndim > 1:
            raise ValueError(
                f"{name}: expected a scalar or a per-subject vector, got ndim {arr.ndim}"
            )
        if self.name == "numpy":
            if arr.ndim == 1 and arr.shape[0] != n_subject:
                raise ValueError(f"{name}: expected {n_subject} values, got {arr.shape[0]}")
            return np.broadcast_to(arr, (n_subject,)).astype(float)
        return arr + self.xp.zeros(n_subject)


_NP = _Backend("numpy")


def _pt_backend() -> _Backend:
    return _Backend("pytensor")


# --------------------------------------------------------------------------------------
# The core primitive: E(t; x_0..x_n), the convolution of exponentials
# --------------------------------------------------------------------------------------


def _sort_nodes(
    be: _Backend, nodes: list[Any], carry: list[Any] | None = None
) -> tuple[list, list]:
    """Sort element-wise with a compare-and-swap network (odd-even transposition).

    ``carry`` (one value per node, e.g. its exponential) is permuted along with the nodes.
    """
    y = list(nodes)
    c = list(nodes if carry is None else carry)
    n = len(y)
    for rnd in range(n):
        for i in range(rnd % 2, n - 1, 2):
            a, b = y[i], y[i + 1]
            keep = a <= b
            y[i], y[i + 1] = be.where(keep, a, b), be.where(keep, b, a)
            if carry is not None:
                ca, cb = c[i], c[i + 1]
                c[i], c[i + 1] = be.where(keep, ca, cb), be.where(keep, cb, ca)
    return y, c


def _exp_conv(be: _Backend, t: Any, nodes: Sequence[Any]) -> Any:
    """E(t; nodes), stable in value and gradient (see the module docstring)."""
    if not 0 < len(nodes) <= 64:
        raise ValueError(f"E(t; nodes) needs 1 to 64 nodes, got {len(nodes)}")
    t = be.asarray(t)
    x = [be.asarray(v) for v in nodes]
    given = t > 0
    t_pos = be.where(given, t, 0.0)
    exps = [be.xp.exp(-xi * t_pos) for xi in x]
    return be.where(given, _exp_conv_pos(be, t_pos, x, exps), 0.0)


def _exp_conv_pos(be: _Backend, t_pos: Any, x: Sequence[Any], exps: Sequence[Any]) -> Any:
    """E(t; x) for t = t_pos >= 0, given ``exps[i] = exp(-x[i] t_pos)`` (shared between calls)."""
    n = len(x) - 1
    if n == 0:
        return exps[0]
    y, exp_y = _sort_nodes(be, list(x), list(exps))
    level = exp_y  # level[i] = E over the run y_i..y_(i+m)
    # Taylor sums of the runs ending at j, T[j][r] = sum_p h_p(u) / (p + r)!, u_l = (y_j - y_l) t
    # over the run's other nodes; for the run (j, j) alone, T_r = 1/r!. Adding the node i to
    # the run gives T_r <- T_r + u_i T'_(r+1) (downwards in r; T' the updated values), and the
    # run's series is T_m. Orders above j + TAYLOR_TERMS are dropped (truncation error of the
    # order u^(P+1)/(P+1)!, as for the series itself).
    taylor_sums: list[list[Any]] = [
        [_INV_FACTORIAL[r] for r in range(j + TAYLOR_TERMS + 1)] for j in range(n + 1)
    ]
    # t^m; "* 1.0" keeps t_pos * t_pos from multiplying a variable by itself (see _kernel)
    t_pow = t_pos * 1.0
    for m in range(1, n + 1):
        new_level = []
        for i in range(n + 1 - m):
            j = i + m
            gap = y[j] - y[i]
            spread = gap * t_pos
            taylor = spread < TAYLOR_SPREAD
            u = be.where(taylor, spread, 0.0)
            sums = taylor_sums[j]
            above = 0.0
            for r in range(len(sums) - 1, m - 1, -1):
                above = sums[r] + u * above
                sums[r] = above
            by_taylor = exp_y[j] * t_pow * sums[m]
            by_recursion = (level[i] - level[i + 1]) / be.where(taylor, 1.0, gap)
            new_level.append(be.where(taylor, by_taylor, by_recursion))
        level = new_level
        t_pow = t_pow * t_pos
    return level[0]


def _exp_conv_naive(be: _Backend, t: Any, nodes: Sequence[Any]) -> Any:
    """The textbook E(t; nodes) = sum_i exp(-x_i t) / prod_(l != i) (x_l - x_i). Unsafe."""
    t = be.asarray(t)
    x = [be.asarray(v) for v in nodes]
    given = t > 0
    t_pos = be.where(given, t, 0.0)
    total = 0.0
    for i, xi in enumerate(x):
        denom = 1.0
        for ell, xl in enumerate(x):
            if ell != i:
                denom = denom * (xl - xi)
        total = total + be.xp.exp(-xi * t_pos) / denom
    return be.where(given, total, 0.0)


def np_exp_conv(t: Any, nodes: Sequence[Any]) -> np.ndarray:
    """E(t; x_0..x_n) = (exp(-x_0 t) * ... * exp(-x_n t))(t), numpy; 0 for t <= 0.

    ``t`` and each node broadcast together (element-wise evaluation); nodes are rates (1/h),
    in any order, possibly equal. Accurate to about 1e-15 relative for any configuration.
    """
    with np.errstate(over="ignore", under="ignore"):
        return _exp_conv(_NP, t, nodes)


_KERNELS: dict[tuple[Any, ...], Any] = {}


class _KernelGradient:
    """Gradient override of a kernel: output gradient times the derivative kernel's outputs.

    A module-level class (not a closure) so that graphs and compiled functions pickle.
    """

    def __init__(self, grad_op: Any, data: tuple[bool, ...]):
        self.grad_op = grad_op
        self.data = data

    def __call__(
        self, inputs: list[Any], _outputs: list[Any], output_grads: list[Any]
    ) -> list[Any]:
        from pytensor.gradient import DisconnectedType

        (g,) = output_grads
        derivs = [] if self.grad_op is None else self.grad_op(*inputs)
        derivs = iter(derivs if isinstance(derivs, list) else [derivs])
        return [DisconnectedType()() if is_data else g * next(derivs) for is_data in self.data]


def _check_no_self_products(inputs: list[Any], outputs: list[Any], key: Any) -> None:
    """PyTensor's scalar ``Mul.grad`` drops repeated inputs (x * x differentiates to 1, not
    2x), so the scalar graphs that are differentiated must never multiply a variable by itself.
    """
    import pytensor.scalar as ps
    from pytensor.graph.traversal import applys_between

    for node in applys_between(inputs, outputs):
        if isinstance(node.op, ps.Mul) and len(set(node.inputs)) < len(node.inputs):
            raise AssertionError(f"{key}: the scalar graph multiplies a variable by itself")


def _kernel(key: tuple[Any, ...], build: Callable[[list[Any]], Any], data: tuple[bool, ...]) -> Any:
    """A PyTensor Op for an element-wise function given as a scalar graph, with its gradient.

    ``build(inputs)`` writes the function on PyTensor *scalar* variables (via :class:`_Backend`
    ``"scalar"``); it becomes one fused loop (``Elemwise(Composite)``) inside an opaque
    ``OpFromGraph`` on float64 vectors. Its gradient is a second fused loop holding the
    derivatives with respect to every input not flagged in ``data``, obtained by automatic
    differentiation of the same scalar graph (so it inherits any double-where guards); data
    inputs get no gradient. Cached per ``(key, data)``.
    """
    cache_key = (key, data)
    if cache_key in _KERNELS:
        return _KERNELS[cache_key]
    import pytensor
    import pytensor.scalar as ps
    import pytensor.tensor as pt
    from pytensor.compile.builders import OpFromGraph
    from pytensor.scalar.basic import Composite
    from pytensor.tensor.elemwise import Elemwise

    xs = [ps.float64(f"x{k}") for k in range(len(data))]
    out = build(xs)
    _check_no_self_products(xs, [out], key)
    wrt = [x for x, is_data in zip(xs, data, strict=True) if not is_data]
    value_op = Elemwise(Composite(xs, [out]))
    grad_op = Elemwise(Composite(xs, list(pytensor.grad(out, wrt)))) if wrt else None

    vectors = [pt.dvector(f"x{k}") for k in range(len(data))]
    op = OpFromGraph(
        vectors,
        [value_op(*vectors)],
        inline=False,
        lop_overrides=_KernelGradient(grad_op, data),
        connection_pattern=[[not is_data] for is_data in data],
        name="_".join(map(str, key)),
    )
    _KERNELS[cache_key] = op
    return op


def _is_data(v: Any) -> bool:
    """True when a PyTensor variable depends on constants only."""
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import graph_inputs

    return all(isinstance(v_in, Constant) for v_in in graph_inputs([v]))


def _apply_kernel(
    key: tuple[Any, ...],
    build: Callable[[list[Any]], Any],
    args: list[Any],
    maybe_data: tuple[int, ...] = (),
) -> Any:
    """Apply :func:`_kernel` to 1-D tensors of equal length.

    Inputs at the positions ``maybe_data`` that depend on constants only get no gradient
    (e.g. the times of a data layout); every other input is differentiated.
    """
    be = _pt_backend()
    args = [be.asarray(v) for v in args]
    data = tuple(k in maybe_data and _is_data(v) for k, v in enumerate(args))
    return _kernel(key, build, data)(*args)


class _JacobianGradient:
    """Gradient of :class:`_JacobianKernel`'s outputs: the output gradients times the partials
    (inputs of the pass-through op), summed per input; a module-level class so graphs pickle.
    """

    def __init__(self, data: tuple[bool, ...], n_out: int, partials: tuple[tuple[int, int], ...]):
        self.data, self.n_out, self.partials = data, n_out, partials

    def __call__(self, inputs: list[Any], outputs: list[Any], output_grads: list[Any]) -> list[Any]:
        from pytensor.gradient import DisconnectedType
        from pytensor.graph.traversal import ancestors

        n_in = len(self.data)
        jac = inputs[n_in + self.n_out :]
        # PyTensor passes the connected outputs only (an output no input reaches, e.g. a
        # level whose parameters are all data, is left out): find each one's position.
        if len(output_grads) == self.n_out:
            grad_of = dict(enumerate(output_grads))
        else:
            values = inputs[n_in : n_in + self.n_out]
            grad_of = {}
            for out, g in zip(outputs, output_grads, strict=True):
                above = set(ancestors([out]))
                grad_of[next(o for o, v in enumerate(values) if v in above)] = g
        total: list[Any] = [None] * n_in
        for (o, k), partial in zip(self.partials, jac, strict=True):
            g = grad_of.get(o)
            if g is None or isinstance(g.type, DisconnectedType):
                continue
            total[k] = g * partial if total[k] is None else total[k] + g * partial
        grads = [DisconnectedType()() if t is None else t for t in total]
        return grads + [DisconnectedType()() for _ in inputs[n_in:]]


@dataclass(frozen=True)
class _JacobianKernel:
    """A multi-output kernel computed together with its partial derivatives.

    ``values`` (an opaque ``OpFromGraph`` around one fused loop) returns the ``n_out`` outputs,
    then one partial derivative per ``(output, input)`` pair of ``partials``: the pairs in
    which the output depends on that (non-data) input. ``grad`` takes the inputs, the outputs
    and the partials and returns the outputs unchanged; its gradient with respect to the
    inputs is the output gradients times the partials, and it has none with respect to the
    values and partials, so reverse mode never differentiates the fused loop.
    """

    values: Any
    grad: Any
    n_out: int
    partials: tuple[tuple[int, int], ...]


def _multi_kernel(
    key: tuple[Any, ...], build: Callable[[list[Any]], list[Any]], data: tuple[bool, ...]
) -> _JacobianKernel:
    """:func:`_kernel` for a scalar graph with several outputs (that share subexpressions),
    computed together with its Jacobian in one fused loop.

    The partial derivatives (automatic differentiation of the scalar graph, per output) are
    computed in the same loop as the values, so a log density and its gradient run the
    forward arithmetic (exponentials, sorting, Taylor sums, recursion) once; a value kernel
    followed by a separate vector-Jacobian kernel recomputes all of it in the second loop.
    """
    cache_key = ("multi", key, data)
    if cache_key in _KERNELS:
        return _KERNELS[cache_key]
    import pytensor
    import pytensor.scalar as ps
    import pytensor.tensor as pt
    from pytensor.compile.builders import OpFromGraph
    from pytensor.scalar.basic import Composite
    from pytensor.tensor.elemwise import Elemwise

    xs = [ps.float64(f"x{k}") for k in range(len(data))]
    outs = build(xs)
    _check_no_self_products(xs, outs, key)
    wrt = [k for k, is_data in enumerate(data) if not is_data]
    partials, derivs = [], []
    for o, out in enumerate(outs):
        grads = pytensor.grad(
            out, [xs[k] for k in wrt], disconnected_inputs="ignore", return_disconnected="none"
        )
        for k, d in zip(wrt, grads, strict=True):
            if d is not None:
                partials.append((o, k))
                derivs.append(d)
    name = "_".join(map(str, key))
    vectors = [pt.dvector(f"x{k}") for k in range(len(data))]
    results = Elemwise(Composite(xs, [*outs, *derivs]))(*vectors)
    values = OpFromGraph(
        vectors, results if isinstance(results, list) else [results], inline=False, name=name
    )
    # The pass-through op: inputs, outputs and partials in, outputs out.
    n_out, n_jac = len(outs), len(partials)
    v_in = [pt.dvector(f"v{o}") for o in range(n_out)]
    j_in = [pt.dvector(f"j{p}") for p in range(n_jac)]
    pattern = [[(o, k) in partials for o in range(n_out)] for k in range(len(data))]
    grad = OpFromGraph(
        [*vectors, *v_in, *j_in],
        [v * 1.0 for v in v_in],
        inline=False,
        lop_overrides=_JacobianGradient(data, n_out, tuple(partials)),
        connection_pattern=pattern + [[False] * n_out] * (n_out + n_jac),
        name=f"{name}_jacobian",
        on_unused_input="ignore",  # the inputs are there for the gradient only
    )
    kernel = _JacobianKernel(values, grad, n_out, tuple(partials))
    _KERNELS[cache_key] = kernel
    return kernel


def _apply_multi_kernel(
    key: tuple[Any, ...],
    build: Callable[[list[Any]], list[Any]],
    args: list[Any],
    maybe_data: tuple[int, ...] = (),
) -> list[Any]:
    """Apply :func:`_multi_kernel` to 1-D tensors of equal length; a list of outputs."""
    be = _pt_backend()
    args = [be.asarray(v) for v in args]
    data = tuple(k in maybe_data and _is_data(v) for k, v in enumerate(args))
    kernel = _multi_kernel(key, build, data)
    results = kernel.values(*args)
    results = results if isinstance(results, list | tuple) else [results]
    outs = kernel.grad(*args, *results)
    return outs if isinstance(outs, list | tuple) else [outs]


@functools.cache
def _scalar_backend() -> _Backend:
    return _Backend("scalar")


def _pt_exp_conv_flat(t: Any, nodes: Sequence[Any]) -> Any:
    """E on 1-D float64 tensors of equal length (the fast path used by the concentrations)."""
    return _apply_kernel(
        ("exp_conv", len(nodes)),
        lambda xs: _exp_conv(_scalar_backend(), xs[0], xs[1:]),
        [t, *nodes],
        maybe_data=(0,),
    )


def pt_exp_conv(t: Any, nodes: Sequence[Any]) -> Any:
    """PyTensor twin of :func:`np_exp_conv` (symbolic; stable values and gradients).

    Inputs broadcast together; the result has their broadcast shape (float64).
    """
    import pytensor.tensor as pt

    if len(nodes) == 0:
        raise ValueError("E(t; nodes) needs at least one node")
    args = pt.broadcast_arrays(*(_pt_backend().asarray(v) for v in (t, *nodes)))
    shape = args[0].shape
    flat = [a.reshape((-1,)) for a in args]
    return _pt_exp_conv_flat(flat[0], flat[1:]).reshape(shape, ndim=args[0].ndim)


def np_exp_conv_naive(t: Any, nodes: Sequence[Any]) -> np.ndarray:
    """The textbook divided-difference formula (divides by node gaps). For comparison only."""
    with np.errstate(all="ignore"):
        return _exp_conv_naive(_NP, t, nodes)


def pt_exp_conv_naive(t: Any, nodes: Sequence[Any]) -> Any:
    """PyTensor twin of :func:`np_exp_conv_naive`: wrong gradients near equal nodes."""
    return _exp_conv_naive(_pt_backend(), t, nodes)


# --------------------------------------------------------------------------------------
# The parent's disposition: eigenvalues and mode weights of the mammillary model
# --------------------------------------------------------------------------------------


def _disposition(
    be: _Backend, cl: Any, vc: Any, q: Any, vp: Any, q2: Any, vp2: Any
) -> tuple[list[Any], list[Any]]:
    xp = be.xp
    k10 = cl / vc
    if q is None:
        return [k10], [k10 * 0.0 + 1.0]
    k12, k21 = q / vc, q / vp
    if q2 is None:
        # (s + k21) / ((s + l1)(s + l2)); l2 - l1 = root; a = k10 + k12 - k21.
        a = k10 + k12 - k21
        root = xp.sqrt(a**2 + 4.0 * k12 * k21)
        lam_hi = 0.5 * (k10 + k12 + k21 + root)
        lam_lo = k10 * k21 / lam_hi
        abs_a = xp.abs(a)
        big = (root + abs_a) / (2.0 * root)
        small = 2.0 * k12 * k21 / (root * (root + abs_a))
        w_hi = be.where(a >= 0, big, small)
        w_lo = be.where(a >= 0, small, big)
        return [lam_lo, lam_hi], [w_lo, w_hi]
    k13, k31 = q2 / vc, q2 / vp2
    # lambda^3 - a2 lambda^2 + a1 lambda - a0 = 0
    a2 = k10 + k12 + k13 + k21 + k31
    a1 = k10 * k21 + k10 * k31 + k21 * k31 + k12 * k31 + k13 * k21
    a0 = k10 * k21 * k31
    shift = a2 / 3.0
    p = a1 - a2**2 / 3.0  # < 0 for three distinct real roots
    qq = -2.0 * a2**3 / 27.0 + a1 * a2 / 3.0 - a0
    minus_p3 = xp.maximum(-p / 3.0, 1e-300)
    amp = 2.0 * xp.sqrt(minus_p3)
    cos_arg = xp.clip(-qq / (2.0 * minus_p3 * xp.sqrt(minus_p3)), -1.0 + 1e-15, 1.0 - 1e-15)
    phi = xp.arccos(cos_arg) / 3.0
    roots = [shift + amp * xp.cos(phi - 2.0 * np.pi * k / 3.0) for k in (2, 1, 0)]
    lams = []
    for lam in roots:
        f = ((lam - a2) * lam + a1) * lam - a0
        df = (3.0 * lam - 2.0 * a2) * lam + a1
        ok = xp.abs(df) > 0
        lams.append(lam - be.where(ok, f, 0.0) / be.where(ok, df, 1.0))
    weights = []
    for i, lam in enumerate(lams):
        num = (k21 - lam) * (k31 - lam)
        den = 1.0
        for ell, other in enumerate(lams):
            if ell != i:
                den = den * (other - lam)
        weights.append(num / den)
    return lams, weights


def np_disposition(
    cl: Any, vc: Any, q: Any = None, vp: Any = None, q2: Any = None, vp2: Any = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Eigenvalues (1/h, ascending) and weights of the central unit-impulse response.

    ``A_c(t) = sum_i w_i exp(-lambda_i t)`` after a unit bolus into the central compartment of a
    1- (``q`` None), 2- (``q2`` None) or 3-compartment mammillary model.
    """
    with np.errstate(all="ignore"):
        f = _NP.asarray
        return _disposition(_NP, *(None if v is None else f(v) for v in (cl, vc, q, vp, q2, vp2)))


def pt_disposition(
    cl: Any, vc: Any, q: Any = None, vp: Any = None, q2: Any = None, vp2: Any = None
) -> tuple[list[Any], list[Any]]:
    """PyTensor twin of :func:`np_disposition` (inputs broadcast together).

    Plain PyTensor tensor operations (PyTensor fuses them into element-wise loops and
    differentiates them itself): the disposition is per subject, so it costs nothing next to
    the per-(observation, dose) kernels, and keeping it out of opaque kernels keeps the
    compiled model small. Every ``where`` in :func:`_disposition` selects between finite
    branches, so its gradient is exact.
    """
    import pytensor.tensor as pt

    be = _pt_backend()
    given = [v for v in (cl, vc, q, vp, q2, vp2) if v is not None]
    args = pt.broadcast_arrays(*(be.asarray(v) for v in given))
    shape, ndim = args[0].shape, args[0].ndim
    flat = [a.reshape((-1,)) for a in args]  # as in the model: 1-D per-subject vectors
    lams, weights = _disposition(be, *flat, *[None] * (6 - len(flat)))
    return (
        [v.reshape(shape, ndim=ndim) for v in lams],
        [v.reshape(shape, ndim=ndim) for v in weights],
    )


# --------------------------------------------------------------------------------------
# The flat (observation, dose) layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TermSet:
    """Flat terms of one kind: one entry per contributing (observation, dose) pair.

    ``scale`` is the amount (mg; boluses) or the rate (mg/h; infusions); ``dt_h`` the time since
    the dose (for ``post`` terms: since the end of the infusion); ``dose_idx`` indexes
    :attr:`DoseObsLayout.inf_subject` (``post`` terms only).
    """

    obs_idx: np.ndarray
    subject_idx: np.ndarray
    dt_h: np.ndarray
    scale: np.ndarray
    level: np.ndarray
    dose_idx: np.ndarray

    def __len__(self) -> int:
        return len(self.obs_idx)

    def select(self, mask: np.ndarray) -> TermSet:
        return TermSet(*(getattr(self, f)[mask] for f in _TERM_FIELDS))


_TERM_FIELDS = ("obs_idx", "subject_idx", "dt_h", "scale", "level", "dose_idx")
#: Term kinds: central bolus, depot bolus, infusion still running, infusion ended.
TERM_KINDS = ("bolus", "depot", "infusing", "post")


@dataclass(frozen=True)
class DoseObsLayout:
    """Data-only description of which doses reach which observations (numpy, built once).

    ``terms[kind]`` for each of :data:`TERM_KINDS`; ``obs_subject`` and ``obs_level`` per
    observation; ``inf_subject`` and ``inf_duration_h`` per distinct (subject, duration) of
    the infusions that have ended before some observation (their end-of-infusion state per
    unit rate is computed once; a ``post`` term's ``dose_idx`` points to it). ``records`` keeps
    the dose, observation and reset records themselves; ``general`` is True where a record uses
    NONMEM's other record types (steady state, resets, modelled rate or duration, modelled
    timing, routes other than the central bolus/infusion and the depot bolus): those layouts are
    evaluated per (observation, dose) pair by the general dose response (``terms`` is empty).
    """

    n_subject: int
    n_obs: int
    obs_subject: np.ndarray
    obs_level: np.ndarray
    terms: dict[str, TermSet]
    inf_subject: np.ndarray
    inf_duration_h: np.ndarray
    records: DoseRecords | None = None
    general: bool = False

    @property
    def max_level(self) -> int:
        return int(self.obs_level.max(initial=0))

    @property
    def n_terms(self) -> int:
        return sum(len(v) for v in self.terms.values())


def _as_1d(name: str, value: Any, n: int, dtype: Any = float) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    return arr.astype(dtype) if dtype is not None else arr


@dataclass(frozen=True)
class DoseRecords:
    """The records behind a layout (numpy, one entry per dose, observation or reset).

    Doses: ``subject``, ``time_h``, ``amt_mg``, ``rate_mg_h`` (0: bolus), ``route`` (name),
    ``ss`` (0 none, 1 steady state after a reset, 2 steady state added), ``ii_h`` (interval of
    steady-state doses), ``rate_mode`` (0 rate from data, 1 modelled rate, 2 modelled duration),
    ``timing_modelled``; observations: ``obs_subject``, ``obs_time_h``, ``obs_level``,
    ``obs_after_events``; resets:
    ``reset_subject``, ``reset_time_h``.
    """

    subject: np.ndarray
    time_h: np.ndarray
    amt_mg: np.ndarray
    rate_mg_h: np.ndarray
    route: np.ndarray
    ss: np.ndarray
    ii_h: np.ndarray
    rate_mode: np.ndarray
    timing_modelled: np.ndarray
    obs_subject: np.ndarray
    obs_time_h: np.ndarray
    obs_level: np.ndarray
    reset_subject: np.ndarray
    reset_time_h: np.ndarray
    obs_after_events: np.ndarray


def expand_additional_doses(time_h: Any, ii_h: Any, addl: Any) -> tuple[np.ndarray, np.ndarray]:
    """NONMEM's ADDL: a dose row with ADDL = n and II = tau stands for doses at t + k tau,
    k = 0..n (vectorised, numpy).

    Returns the index of the row each expanded dose comes from and its time, row by row and in
    time order within a row. ``addl`` must be a whole number >= 0 and ``ii_h`` > 0 where
    ``addl`` > 0.
    """
    time = np.atleast_1d(np.asarray(time_h, dtype=float))
    n = time.shape[0]
    ii = _as_1d("ii_h", ii_h, n)
    addl_f = _as_1d("addl", addl, n)
    problems = []
    if not np.all(np.isfinite(time)):
        problems.append("time_h: must be finite")
    if not np.all(np.isfinite(addl_f)) or np.any(addl_f < 0) or np.any(addl_f != np.round(addl_f)):
        bad = np.flatnonzero(~np.isfinite(addl_f) | (addl_f < 0) | (addl_f != np.round(addl_f)))
        problems.append(f"addl: must be a whole number >= 0 (rows {bad[:10].tolist()})")
    else:
        bad = np.flatnonzero((addl_f > 0) & ~(ii > 0))
        if bad.size:
            problems.append(f"ii_h: must be > 0 where addl > 0 (rows {bad[:10].tolist()})")
    if problems:
        raise ValueError("invalid additional doses:\n  - " + "\n  - ".join(problems))
    counts = addl_f.astype(np.int64) + 1
    row = np.repeat(np.arange(n), counts)
    k = np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return row, time[row] + k * ii[row]


def _pairs(
    d_subj: np.ndarray,
    d_time: np.ndarray,
    o_subj: np.ndarray,
    o_time: np.ndarray,
    n_subject: int,
    o_after: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (observation, dose) pairs of the same subject with t_obs > t_dose (t_obs >= t_dose
    where ``o_after``), and t_obs - t_dose."""
    n_obs = o_subj.shape[0]
    order = np.argsort(d_subj, kind="stable")
    starts = np.searchsorted(d_subj[order], np.arange(n_subject), side="left")
    stops = np.searchsorted(d_subj[order], np.arange(n_subject), side="right")
    counts = (stops - starts)[o_subj]
    pair_obs = np.repeat(np.arange(n_obs), counts)
    offset = np.arange(pair_obs.size) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_dose = order[np.repeat(starts[o_subj], counts) + offset]
    dt = o_time[pair_obs] - d_time[pair_dose]
    keep = dt > 0 if o_after is None else (dt > 0) | ((dt == 0) & o_after[pair_obs])
    return pair_obs[keep], pair_dose[keep], dt[keep]


def build_layout(
    *,
    dose_subject: Any,
    dose_time_h: Any,
    dose_amt_mg: Any,
    obs_subject: Any,
    obs_time_h: Any,
    dose_rate_mg_h: Any = 0.0,
    dose_route: Any = "central",
    obs_level: Any = 0,
    n_subject: int | None = None,
    dose_ss: Any = 0,
    dose_ii_h: Any = 0.0,
    dose_rate_mode: Any = 0,
    reset_subject: Any = (),
    reset_time_h: Any = (),
    dose_timing_modelled: Any = False,
    obs_after_events: Any = False,
) -> DoseObsLayout:
    """Flat (observation, dose) terms from event arrays (numpy; done once per dataset).

    Subjects are indices 0..n_subject-1 into the parameter arrays. ``dose_rate_mg_h`` 0 is a
    bolus, > 0 a zero-order infusion of duration amt / rate; ``dose_route`` is a route name per
    dose (or one for all): ``"central"``, ``"depot"`` (first-order absorption with the legacy
    ``ka``/``f_bio``) or any name given in ``routes`` to the concentration functions;
    ``obs_level`` is the chain level observed (0 parent, j metabolite j). A dose contributes to
    an observation of the same subject taken strictly after it.

    NONMEM's other records: ``dose_ss`` 1 is a steady-state dose after a reset of the subject
    (SS=1), 2 a steady state added to what is there (SS=2), both of the dose repeated every
    ``dose_ii_h`` (> 0); a steady-state dose of amount 0 with a rate is a constant infusion at
    steady state. ``dose_rate_mode`` 1 takes the infusion rate from the route's ``rate``
    (RATE=-1), 2 its duration from the route's ``duration`` (RATE=-2). ``reset_subject`` and
    ``reset_time_h`` are resets (EVID 3, and the reset half of EVID 4): doses given before a
    reset do not reach observations after it. ``dose_timing_modelled`` marks doses whose lag
    or duration is a model parameter (the general evaluation decides each pair's phase at run
    time for every dose). ADDL rows are expanded beforehand (:func:`expand_additional_doses`).
    An observation at the time of a dose or a reset sees the state before it, unless
    ``obs_after_events`` (per observation or one for all) is True: in NONMEM's data order, its
    row follows the dose and reset rows of its time, and it sees their effect (a lagged dose
    acting exactly at an observation's time is seen by it either way).
    """
    d_subj = np.asarray(dose_subject)
    n_dose = d_subj.shape[0] if d_subj.ndim else 1
    d_subj = _as_1d("dose_subject", dose_subject, n_dose, None)
    o_subj = np.asarray(obs_subject)
    n_obs = o_subj.shape[0] if o_subj.ndim else 1
    o_subj = _as_1d("obs_subject", obs_subject, n_obs, None)
    r_subj = np.asarray(reset_subject)
    n_reset = r_subj.shape[0] if r_subj.ndim else 1
    r_subj = _as_1d("reset_subject", reset_subject, n_reset, None)
    if not all(np.issubdtype(a.dtype, np.integer) or a.size == 0 for a in (d_subj, o_subj, r_subj)):
        raise ValueError("dose_subject, obs_subject and reset_subject must be integer indices")
    d_subj = d_subj.astype(np.int64)
    o_subj = o_subj.astype(np.int64)
    r_subj = r_subj.astype(np.int64)
    d_time = _as_1d("dose_time_h", dose_time_h, n_dose)
    d_amt = _as_1d("dose_amt_mg", dose_amt_mg, n_dose)
    d_rate = _as_1d("dose_rate_mg_h", dose_rate_mg_h, n_dose)
    d_route = _as_1d("dose_route", dose_route, n_dose, None).astype(str)
    d_ss = _as_1d("dose_ss", dose_ss, n_dose)
    d_ii = _as_1d("dose_ii_h", dose_ii_h, n_dose)
    d_mode = _as_1d("dose_rate_mode", dose_rate_mode, n_dose)
    d_timing = _as_1d("dose_timing_modelled", dose_timing_modelled, n_dose, None)
    o_time = _as_1d("obs_time_h", obs_time_h, n_obs)
    o_level = _as_1d("obs_level", obs_level, n_obs, None).astype(np.int64)
    o_after = _as_1d("obs_after_events", obs_after_events, n_obs, None)
    r_time = _as_1d("reset_time_h", reset_time_h, n_reset)
    if n_subject is None:
        n_subject = int(
            max(d_subj.max(initial=-1), o_subj.max(initial=-1), r_subj.max(initial=-1)) + 1
        )
    problems = []
    for name, arr in (("dose_subject", d_subj), ("obs_subject", o_subj), ("reset_subject", r_subj)):  # fmt: skip
        if arr.size and (arr.min() < 0 or arr.max() >= n_subject):
            problems.append(f"{name}: indices must lie in [0, {n_subject})")
    for name, arr in (("dose_time_h", d_time), ("obs_time_h", o_time), ("dose_amt_mg", d_amt), ("reset_time_h", r_time)):  # fmt: skip
        if not np.all(np.isfinite(arr)):
            problems.append(f"{name}: must be finite")
    if np.any(d_amt < 0) or np.any(d_rate < 0) or not np.all(np.isfinite(d_rate)):
        problems.append("dose_amt_mg and dose_rate_mg_h must be finite and >= 0")
    bad = np.flatnonzero(~np.isin(d_ss, (0, 1, 2)))
    if bad.size:
        problems.append(f"dose_ss: must be 0, 1 or 2 (doses {bad[:10].tolist()})")
    constant = (d_ss > 0) & (d_amt == 0) & (d_rate > 0)  # constant infusion at steady state
    bad = np.flatnonzero((d_ss > 0) & ~constant & ~(d_ii > 0))
    if bad.size:
        problems.append(
            "dose_ii_h: must be > 0 where dose_ss > 0, except for a constant infusion"
            f" (amount 0, rate > 0) (doses {bad[:10].tolist()})"
        )
    if not np.all(np.isfinite(d_ii)) or np.any(d_ii < 0):
        problems.append("dose_ii_h: must be finite and >= 0")
    bad = np.flatnonzero(~np.isin(d_mode, (0, 1, 2)))
    if bad.size:
        problems.append(f"dose_rate_mode: must be 0, 1 or 2 (doses {bad[:10].tolist()})")
    bad = np.flatnonzero((d_mode > 0) & ((d_rate > 0) | ~(d_amt > 0)))
    if bad.size:
        problems.append(
            "dose_rate_mode: a modelled rate or duration needs an amount > 0 and no data rate"
            f" (doses {bad[:10].tolist()})"
        )
    bad = np.flatnonzero((d_ss > 0) & (d_amt == 0) & (d_rate == 0))
    if bad.size:
        problems.append(
            f"dose_ss: a steady-state dose needs an amount or a rate (doses {bad[:10].tolist()})"
        )
    if d_timing.dtype != bool and not np.all(np.isin(d_timing, (0, 1))):
        problems.append("dose_timing_modelled: must be True or False")
    d_timing = d_timing.astype(bool)
    if o_after.dtype != bool and not np.all(np.isin(o_after, (0, 1))):
        problems.append("obs_after_events: must be True or False")
    o_after = o_after.astype(bool)
    bad_route = sorted({r for r in set(d_route) if not r or r != r.strip()})
    if bad_route:
        problems.append(f"dose_route: route names must be non-empty words, got {bad_route}")
    if np.any((o_level < 0) | (o_level > MAX_METABOLITES)):
        problems.append(f"obs_level: must be in 0..{MAX_METABOLITES}")
    if problems:
        raise ValueError("invalid dose/observation arrays:\n  - " + "\n  - ".join(problems))

    d_ss = d_ss.astype(np.int64)
    d_mode = d_mode.astype(np.int64)
    records = DoseRecords(
        subject=d_subj, time_h=d_time, amt_mg=d_amt, rate_mg_h=d_rate, route=d_route, ss=d_ss,
        ii_h=d_ii, rate_mode=d_mode, timing_modelled=d_timing, obs_subject=o_subj,
        obs_time_h=o_time, obs_level=o_level, reset_subject=r_subj, reset_time_h=r_time,
        obs_after_events=o_after,
    )  # fmt: skip
    general = bool(
        n_reset
        or np.any(d_ss > 0)
        or np.any(d_mode > 0)
        or np.any(d_timing)
        or np.any(o_after)
        or np.any(~np.isin(d_route, ("central", "depot")))
        or np.any((d_route == "depot") & (d_rate > 0))
    )
    if general:
        empty = TermSet(*(np.zeros(0, np.int64 if f != "dt_h" and f != "scale" else float) for f in _TERM_FIELDS))  # fmt: skip
        return DoseObsLayout(
            n_subject=int(n_subject),
            n_obs=int(n_obs),
            obs_subject=o_subj,
            obs_level=o_level,
            terms=dict.fromkeys(TERM_KINDS, empty),
            inf_subject=np.zeros(0, np.int64),
            inf_duration_h=np.zeros(0),
            records=records,
            general=True,
        )

    pair_obs, pair_dose, dt = _pairs(d_subj, d_time, o_subj, o_time, int(n_subject))
    dose_duration = np.where(d_rate > 0, d_amt / np.where(d_rate > 0, d_rate, 1.0), 0.0)
    rate = d_rate[pair_dose]
    infusion = rate > 0
    duration = dose_duration[pair_dose]
    depot = d_route[pair_dose] == "depot"
    kinds = {
        "bolus": ~infusion & ~depot,
        "depot": depot,
        "infusing": infusion & (dt <= duration),
        "post": infusion & (dt > duration),
    }
    # Infusion doses with an ended-infusion term, indexed by their distinct (subject, duration):
    # the end-of-infusion state per unit rate depends on nothing else, so the repeated
    # infusions of a regimen (e.g. ten daily 4-h infusions) share one evaluation.
    ended = np.unique(pair_dose[kinds["post"]])
    ended_keys, ended_inverse = _unique_rows(d_subj[ended], dose_duration[ended])
    inf_index = np.full(n_dose, -1, dtype=np.int64)
    inf_index[ended] = ended_inverse
    terms = {}
    for kind, mask in kinds.items():
        dose = pair_dose[mask]
        terms[kind] = TermSet(
            obs_idx=pair_obs[mask],
            subject_idx=o_subj[pair_obs[mask]],
            dt_h=dt[mask] - (duration[mask] if kind == "post" else 0.0),
            scale=rate[mask] if kind in ("infusing", "post") else d_amt[dose],
            level=o_level[pair_obs[mask]],
            dose_idx=inf_index[dose] if kind == "post" else np.zeros(mask.sum(), np.int64),
        )
    return DoseObsLayout(
        n_subject=int(n_subject),
        n_obs=int(n_obs),
        obs_subject=o_subj,
        obs_level=o_level,
        terms=terms,
        # contiguous copies: a strided constant in a numba-compiled graph is a dynamic global,
        # which makes the whole compiled log density uncacheable
        inf_subject=ended_keys[:, 0].astype(np.int64),
        inf_duration_h=np.ascontiguousarray(ended_keys[:, 1]),
        records=records,
    )


# --------------------------------------------------------------------------------------
# Concentrations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metabolite:
    """One metabolite of the chain (per-subject arrays or scalars; numpy or PyTensor).

    ``cl_m`` elimination clearance (L/h), ``v_m`` volume (L), ``r`` mass conversion factor
    (molar mass of the metabolite over that of its precursor). Formation: either ``cl_f``, the
    formation clearance (L/h) from the precursor (for the first metabolite, part of the
    parent's ``cl``), or ``fm``, the fraction of the precursor's elimination clearance that
    forms this metabolite (cl_f = fm * cl of the precursor).
    """

    cl_m: Any
    v_m: Any
    r: Any = 1.0
    cl_f: Any = None
    fm: Any = None

    def __post_init__(self) -> None:
        if (self.cl_f is None) == (self.fm is None):
            raise ValueError("Metabolite: give exactly one of cl_f (formation clearance) or fm")


def _chain_amounts(
    be: _Backend,
    t: Any,
    lams: Sequence[Any],
    ks: Sequence[Any],
    extra: Any,
    coefs: Sequence[Any],
    states: Sequence[Any],
    split_modes: bool,
    method: str = "stable",
) -> list[Any]:
    """Reduced amounts of the chain levels 0..len(ks) at time ``t`` after one input.

    ``A_0 = sum_i c_i E(t; lambda_i, z)`` (one output per mode when ``split_modes``) and, for
    level l >= 1, ``A_l = sum_i c_i E(t; lambda_i, z, k_1..k_l) + sum_(r<=l) M_r E(t; k_r..k_l)``
    with ``c_i`` the ``coefs``, ``M_r`` the ``states`` (metabolite amounts already present,
    reduced by their chain coefficient; empty when none) and ``z`` the ``extra`` node: None
    (bolus or state), ``"zero"`` (infusion still running: the step response) or a value
    (depot: ka). All E share one exponential per node; 0 for t <= 0.
    """
    t = be.asarray(t)
    given = t > 0
    t_pos = be.where(given, t, 0.0)
    if method == "naive":

        def conv(entries: list[tuple[Any, Any]]) -> Any:
            return _exp_conv_naive(be, t_pos, [x for x, _ in entries])
    else:

        def conv(entries: list[tuple[Any, Any]]) -> Any:
            return _exp_conv_pos(be, t_pos, [x for x, _ in entries], [e for _, e in entries])

    def node(x: Any) -> tuple[Any, Any]:
        return x, be.xp.exp(-x * t_pos)

    lam_e = [node(x) for x in lams]
    k_e = [node(x) for x in ks]
    if extra is None:
        base = []
    elif isinstance(extra, str):  # "zero": the node 0, exp(0) = 1
        base = [(0.0, 1.0)]
    else:
        base = [node(extra)]
    out = []
    level0 = [c * conv([lam_e[i], *base]) for i, c in enumerate(coefs)]
    out.extend(level0 if split_modes else [_add_all(level0)])
    for lev in range(1, len(ks) + 1):
        terms = [c * conv([lam_e[i], *base, *k_e[:lev]]) for i, c in enumerate(coefs)]
        terms += [m * conv(k_e[r:lev]) for r, m in enumerate(states[:lev])]
        out.append(_add_all(terms))
    return [be.where(given, o, 0.0) for o in out]


class _Rows:
    """Rows ``index`` of a table stored row-major as a flat vector of ``width`` columns:
    ``rows[:, c]`` is a 1-D gather (its gradient a 1-D scatter-add, much cheaper than the
    matrix scatter-add of a row gather). Every column stays in the graph, used or not.
    """

    def __init__(self, be: _Backend, columns: list[Any], index: np.ndarray):
        self.flat = be.xp.stack(columns, axis=1).reshape((-1,))
        self.width = len(columns)
        self.index = index

    def take(self, index: np.ndarray) -> _Rows:
        rows = object.__new__(_Rows)
        rows.flat, rows.width, rows.index = self.flat, self.width, index
        return rows

    def __getitem__(self, key: tuple[slice, int]) -> Any:
        return self.flat[self.index * self.width + key[1]]


def _add_all(terms: list[Any]) -> Any:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _unique_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the stacked columns (as float) in lexicographic order, and the index of
    each row's distinct row: ``np.unique(..., axis=0, return_inverse=True)`` by one lexsort
    (several times faster on millions of rows than the row-as-bytes sort of ``axis=0``)."""
    keys = np.stack(columns, axis=1).astype(float)
    if len(keys) == 0:
        return keys, np.zeros(0, np.int64)
    order = np.lexsort(keys.T[::-1])
    ordered = keys[order]
    new = np.ones(len(keys), bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group = np.cumsum(new) - 1
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = group
    return ordered[new], inverse


# --------------------------------------------------------------------------------------
# NONMEM's dose records: steady state, resets, lag, bioavailability, modelled rate and
# duration, depot infusions, transit chains (the general per-pair dose response)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Parameters of one dose route: scalars or per-subject arrays, numpy or PyTensor.

    ``ka`` None: doses go into the central compartment; else first-order absorption (1/h) from
    a depot, after ``n_transit`` transit compartments of rate constant ``ktr`` (1/h) if any.
    ``f`` bioavailability: scales a bolus; a data-rate infusion keeps its rate and lasts
    f amt / rate (NONMEM's convention); a modelled-rate infusion lasts f amt / ``rate``, a
    modelled-duration one runs at f amt / ``duration``. ``lag`` (h): the dose acts at
    t_dose + lag. ``rate`` (mg/h) and ``duration`` (h) are the modelled rate and duration of
    the route's doses of ``dose_rate_mode`` 1 and 2. ``level`` the chain level the dose
    enters: 0 the parent's central compartment, j >= 1 the compartment of metabolite j (a dose
    of A mg is A mg of metabolite j, through the depot and transits where ``ka`` is given).
    """

    ka: Any = None
    f: Any = 1.0
    lag: Any = 0.0
    rate: Any = None
    duration: Any = None
    n_transit: int = 0
    ktr: Any = None
    level: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.level, int | np.integer) or not 0 <= self.level <= MAX_METABOLITES:
            raise ValueError(f"Route.level: must be a whole number in 0..{MAX_METABOLITES}, got {self.level!r}")  # fmt: skip
        if not isinstance(self.n_transit, int | np.integer) or self.n_transit < 0:
            raise ValueError(f"Route.n_transit: must be a whole number >= 0, got {self.n_transit!r}")  # fmt: skip
        if (self.n_transit > 0) != (self.ktr is not None):
            raise ValueError("Route.ktr: give ktr exactly when n_transit > 0")
        if self.n_transit > 0 and self.ka is None:
            raise ValueError("Route.n_transit: transit compartments need a depot (ka)")
        if self.n_transit > 16:
            raise ValueError(f"Route.n_transit: at most 16, got {self.n_transit}")


#: Kinds of general (observation, dose) pairs.
GENERAL_KINDS = ("bolus", "infusion", "ss_bolus", "ss_infusion", "ss_constant")


def _mul(a: Any, b: Any) -> Any:
    """a * b, never a variable times itself (see :func:`_check_no_self_products`)."""
    return a * (b * 1.0) if a is b else a * b


def _prod(values: Sequence[Any]) -> Any:
    total: Any = None
    for v in values:
        total = v if total is None else _mul(total, v)
    return 1.0 if total is None else total


class _Clock:
    """E(t; x_p..x_q) over the sub-runs of one chain of nodes at one time t (exps shared)."""

    def __init__(self, be: _Backend, t: Any, x: Sequence[Any]):
        self.be = be
        self.given = t >= 0
        self.t_pos = be.where(self.given, t, 0.0)
        self.x = list(x)
        self.exps = [be.xp.exp(-xi * self.t_pos) for xi in x]

    def e(self, p: int, q: int, zero: bool = False) -> Any:
        """E(t; [0,] x_p..x_q); 0 for t < 0 (at t = 0, 1 for one node: a state propagated by
        no time is itself, and a bolus acting at an observation's time is seen by it)."""
        nodes, exps = self.x[p : q + 1], self.exps[p : q + 1]
        if zero:
            nodes, exps = [0.0, *nodes], [1.0, *exps]
        if len(nodes) == 1:
            return self.be.where(self.given, exps[0], 0.0)
        return self.be.where(self.given, _exp_conv_pos(self.be, self.t_pos, nodes, exps), 0.0)


class _Chain:
    """One mode's chain: nodes x_0..x_n (upstream depot/transits, lambda_i, k_1..k_L) with
    the transfer factor ``beta[p]`` from position p to p + 1 (the upstream rate constants; 1
    from the central compartment on, the metabolites' formation factors being applied to the
    reduced amounts afterwards). States are lists of amounts per position (None: 0)."""

    def __init__(self, be: _Backend, ups: Sequence[Any], lam: Any, ks: Sequence[Any]):
        self.be = be
        self.x = [*ups, lam, *ks]
        self.m = len(ups)
        self.n = len(self.x) - 1
        self.beta = [*ups, *([None] * (len(ks)))]  # None: a unit transfer

    def b(self, p: int, q: int) -> Any:
        return _prod([v for v in self.beta[p:q] if v is not None])

    def outputs(self) -> range:
        return range(self.m, self.n + 1)

    def propagate(self, state: Sequence[Any], clock: _Clock, positions: Sequence[int]) -> list:
        """Amounts at ``positions`` a time t after ``state`` (t <= 0 gives 0)."""
        out = []
        for q in positions:
            terms = [
                _mul(_mul(a, self.b(p, q)), clock.e(p, q)) if p < q else _mul(a, clock.e(p, q))
                for p, a in enumerate(state[: q + 1])
                if a is not None
            ]
            out.append(_add_all(terms) if terms else 0.0)
        return out

    def step(self, clock: _Clock, positions: Sequence[int]) -> list:
        """Amounts after a unit-rate input into position 0 running for t (the step response)."""
        return [
            _mul(self.b(0, q), clock.e(0, q, zero=True)) if q else clock.e(0, 0, zero=True)
            for q in positions
        ]

    def steady_sum(self, state: Sequence[Any], tau: Any) -> list:
        """sum_(k >= 0) of ``state`` propagated by k tau: amounts at every position.

        sum_k E(t + k tau; x_p..x_q) = sum_r G_pr E(t; x_r..x_q) with G = (I - M)^-1,
        M_ab = E(tau; x_a..x_b) upper triangular (Opitz's formula for the divided differences
        of 1 / (1 - exp(-x tau))); back substitution adds positive terms only.
        """
        be = self.be
        clock = _Clock(be, tau, self.x)
        one_minus = [-be.xp.expm1(-xi * clock.t_pos) for xi in self.x]
        mat = {(a, q): clock.e(a, q) for q in range(self.n + 1) for a in range(q)}
        out: list[Any] = [None] * (self.n + 1)
        for p, amount in enumerate(state):
            if amount is None:
                continue
            row: dict[int, Any] = {}
            for q in range(p, self.n + 1):
                acc = 1.0 if q == p else _add_all([_mul(row[a], mat[a, q]) for a in range(p, q)])
                row[q] = acc / one_minus[q]
                term = _mul(amount, row[q]) if q == p else _mul(_mul(amount, self.b(p, q)), row[q])
                out[q] = term if out[q] is None else out[q] + term
        return out

    def tail_sum(
        self, tau_clock_rows: dict[int, Any], clock: _Clock, positions: Sequence[int]
    ) -> list:
        """Ksum at ``positions``: sum_k [H_inf - H(t + k tau)] for the unit step into position 0,
        given ``tau_clock_rows`` = G_0p (p = 0..n)."""
        out = []
        for q in positions:
            terms = []
            for r in range(q + 1):
                e_r = _add_all([_mul(tau_clock_rows[p], clock.e(p, r)) for p in range(r + 1)])
                terms.append(e_r / _prod(self.x[r : q + 1]))
            total = _add_all(terms)
            out.append(_mul(self.b(0, q), total) if q else total)
        return out

    def g_row0(self, tau: Any) -> dict[int, Any]:
        be = self.be
        clock = _Clock(be, tau, self.x)
        one_minus = [-be.xp.expm1(-xi * clock.t_pos) for xi in self.x]
        row: dict[int, Any] = {}
        for q in range(self.n + 1):
            acc = 1.0 if q == 0 else _add_all([_mul(row[a], clock.e(a, q)) for a in range(q)])
            row[q] = acc / one_minus[q]
        return row

    def h_inf(self, positions: Sequence[int]) -> list:
        """Amounts at ``positions`` at the steady state of a unit-rate input into position 0."""
        return [_mul(self.b(0, q), 1.0 / _prod(self.x[: q + 1])) if q else 1.0 / self.x[0] for q in positions]  # fmt: skip


def _wrap(be: _Backend, s: Any, tau: Any) -> Any:
    """s where s >= 0, else s + N tau in [0, tau) (what the train's earlier doses give before
    a lagged dose acts)."""
    tau_safe = be.where(tau > 0, tau, 1.0)
    n_back = be.xp.ceil(-s / tau_safe)
    return be.where(s >= 0, s, s + n_back * tau_safe)


def _dose_response(
    be: _Backend,
    kind: str,
    dt: Any,
    tau: Any,
    lag: Any,
    amount: Any,
    rate: Any,
    duration: Any,
    ups: Sequence[Any],
    lams: Sequence[Any],
    weights: Sequence[Any],
    ks: Sequence[Any],
) -> list[Any]:
    """Reduced amounts of the chain levels 0..len(ks) at ``dt`` after the dose record.

    ``amount`` is f amt (boluses), ``rate`` and ``duration`` those of an infusion (already with
    f), ``tau`` the interval of steady-state doses, ``ups`` the upstream (transit, depot) nodes.
    """
    s = dt - lag
    total: list[Any] | None = None
    for lam, w in zip(lams, weights, strict=True):
        ch = _Chain(be, ups, lam, ks)
        pos = list(ch.outputs())
        if kind == "bolus":
            out = ch.propagate([amount], _Clock(be, s, ch.x), pos)
        elif kind == "ss_bolus":
            state = ch.steady_sum([amount], tau)
            out = ch.propagate(state, _Clock(be, _wrap(be, s, tau), ch.x), pos)
        elif kind == "ss_constant":
            # NONMEM: the compartments at the constant infusion's steady state at the dose's
            # time, and no input after it
            state = [_mul(rate, h) for h in ch.h_inf(range(ch.n + 1))]
            s_pos = be.where(s > 0, s, 0.0)
            out = ch.propagate(state, _Clock(be, s_pos, ch.x), pos)
        elif kind in ("infusion", "ss_infusion"):
            s_eff = s if kind == "infusion" else _wrap(be, s, tau)
            end = ch.step(_Clock(be, duration, ch.x), range(ch.n + 1))
            running = ch.step(_Clock(be, s_eff, ch.x), pos)
            ended = ch.propagate(end, _Clock(be, s_eff - duration, ch.x), pos)
            single = [be.where(s_eff <= duration, a, b) for a, b in zip(running, ended, strict=True)]  # fmt: skip
            if kind == "infusion":
                out = [_mul(rate, v) for v in single]
            else:
                # T <= tau: this dose, plus the ended earlier ones as one steady-state state.
                past = ch.propagate(ch.steady_sum(end, tau), _Clock(be, s_eff + tau - duration, ch.x), pos)  # fmt: skip
                short = [a + b for a, b in zip(single, past, strict=True)]
                # T > tau (overlapping infusions): sum_k [H(s + k tau) - H(s - T + k tau)]
                # = Ksum(b') - Ksum(a') + (N(b) - N(a)) H_inf, a = s, b = s - T.
                tau_safe = be.where(tau > 0, tau, 1.0)
                g0 = ch.g_row0(tau)
                h_inf = ch.h_inf(pos)
                parts = []
                for y in (s, s - duration):
                    n_back = be.where(y > 0, 0.0, be.xp.floor(-y / tau_safe) + 1.0)
                    y_wrapped = y + n_back * tau_safe
                    parts.append((n_back, ch.tail_sum(g0, _Clock(be, y_wrapped, ch.x), pos)))
                (n_a, k_a), (n_b, k_b) = parts
                long = [kb - ka_ + (n_b - n_a) * h for ka_, kb, h in zip(k_a, k_b, h_inf, strict=True)]  # fmt: skip
                out = [
                    _mul(rate, be.where(duration <= tau, a, b))
                    for a, b in zip(short, long, strict=True)
                ]
        else:
            raise ValueError(f"unknown dose kind {kind!r}")
        weighted = [_mul(w, v) for v in out]
        total = weighted if total is None else [a + b for a, b in zip(total, weighted, strict=True)]
    assert total is not None
    return total


def _is_symbolic(x: Any) -> bool:
    try:
        from pytensor.graph.basic import Variable
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Variable)


def _check_route_values(name: str, route: Route) -> None:
    """Refuse impossible numeric route parameters (symbolic ones are the model's business)."""
    rules = (("ka", "> 0", lambda v: v > 0), ("f", ">= 0", lambda v: v >= 0),
             ("lag", ">= 0", lambda v: v >= 0), ("rate", "> 0", lambda v: v > 0),
             ("duration", "> 0", lambda v: v > 0), ("ktr", "> 0", lambda v: v > 0))  # fmt: skip
    for field, text, ok in rules:
        value = getattr(route, field)
        if value is None or _is_symbolic(value):
            continue
        arr = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(arr)) or not np.all(ok(arr)):
            raise ValueError(f"routes[{name!r}].{field}: must be finite and {text}")


def _resolve_routes(
    records: DoseRecords, routes: Mapping[str, Route] | None, ka: Any, f_bio: Any
) -> dict[str, Route]:
    given = dict(routes or {})
    for name, route in given.items():
        if not isinstance(route, Route):
            raise ValueError(f"routes[{name!r}]: expected a Route, got {type(route).__name__}")
        _check_route_values(name, route)
    out = {}
    for name in np.unique(records.route):
        name = str(name)
        if name in given:
            out[name] = given[name]
        elif name == "central":
            out[name] = Route()
        elif name == "depot":
            if ka is None or f_bio is None:
                raise ValueError("dose_route: depot doses need ka and f_bio (or routes['depot'])")
            out[name] = Route(ka=ka, f=f_bio)
        else:
            raise ValueError(
                f"dose_route: route {name!r} has no entry in routes (given: {sorted(given)})"
            )
    return out


def _general_pairs(layout: DoseObsLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observation, dose) pairs of a general layout: t_obs > t_dose (or t_obs = t_dose, for an
    observation after the events of its time), and no reset (EVID 3/4, or an SS=1 dose) of the
    subject after the dose and before the observation."""
    rec = layout.records
    assert rec is not None
    pair_obs, pair_dose, dt = _pairs(
        rec.subject, rec.time_h, rec.obs_subject, rec.obs_time_h, layout.n_subject,
        rec.obs_after_events,
    )  # fmt: skip
    ss1 = rec.ss == 1
    r_subj = np.concatenate([rec.reset_subject, rec.subject[ss1]])
    r_time = np.concatenate([rec.reset_time_h, rec.time_h[ss1]])
    if r_subj.size:
        keep = np.ones(pair_obs.size, bool)
        p_subj = rec.obs_subject[pair_obs]
        t_obs = rec.obs_time_h[pair_obs]
        t_dose = rec.time_h[pair_dose]
        for subject in np.unique(r_subj):
            times = np.sort(r_time[r_subj == subject])
            sel = np.flatnonzero(p_subj == subject)
            # resets after the dose and before the observation (or at its time, where it
            # comes after the events of its time)
            side = np.where(rec.obs_after_events[pair_obs[sel]], "right", "left")
            upto = np.where(
                side == "right",
                np.searchsorted(times, t_obs[sel], side="right"),
                np.searchsorted(times, t_obs[sel], side="left"),
            )
            between = upto - np.searchsorted(times, t_dose[sel], side="right")
            keep[sel[between > 0]] = False
        pair_obs, pair_dose, dt = pair_obs[keep], pair_dose[keep], dt[keep]
    return pair_obs, pair_dose, dt


def _general_kind(rec: DoseRecords) -> np.ndarray:
    infusion = (rec.rate_mode > 0) | (rec.rate_mg_h > 0)
    ss = rec.ss > 0
    constant = ss & (rec.amt_mg == 0) & (rec.rate_mg_h > 0)
    kind = np.where(infusion, 1, 0) + np.where(ss, 2, 0)
    return np.where(constant, 4, kind)  # index into GENERAL_KINDS


def _conc_general(
    be: _Backend,
    layout: DoseObsLayout,
    routes: dict[str, Route],
    subj: Callable[[Any, str], Any],
    lams: list[Any],
    weights: list[Any],
    k_el: list[Any],
    gains: list[Any],
    method: str,
) -> tuple[Any, Any]:
    """Amounts per observation of a general layout (see :func:`_dose_response`): the reduced
    amounts of the doses into the parent (level-0 routes), and the amounts (mg) of the doses
    into a metabolite's compartment (None where no route has one).

    A dose into level j >= 1 starts a chain of its own: nodes (upstream, k_j, k_(j+1)..k_L),
    weight 1, level l >= j scaled by the gains (r_m k_fm) of the levels j+1..l, and nothing
    in the levels below j.
    """
    rec = layout.records
    assert rec is not None
    xp = be.xp
    n_lev = layout.max_level  # metabolite levels evaluated
    if method != "stable":
        raise ValueError("method='naive' is for the central/depot records only")
    pair_obs, pair_dose, dt = _general_pairs(layout)
    kinds = _general_kind(rec)[pair_dose]
    route_of = rec.route[pair_dose]
    pair_level = rec.obs_level[pair_obs]
    collect: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
    offsets = {False: 0, True: 0}
    for name, route in routes.items():
        j = int(route.level)
        if j == 0:
            lams_r, w_r, k_r = lams, weights, k_el[1 : n_lev + 1]
        else:
            lams_r, w_r, k_r = [k_el[j]], [None], k_el[j + 1 : n_lev + 1]
        n_eig, n_k = len(lams_r), len(k_r)
        parts, pair_flat, pair_obs_all = collect[j > 0]
        f = subj(route.f, f"routes[{name!r}].f")
        lag = subj(route.lag, f"routes[{name!r}].lag")
        ups_s = []
        if route.ka is not None:
            ktr = subj(route.ktr, f"routes[{name!r}].ktr") if route.n_transit else None
            ups_s = ([ktr] if route.n_transit else []) + [subj(route.ka, f"routes[{name!r}].ka")]
        for k, kind in enumerate(GENERAL_KINDS):
            mask = (route_of == name) & (kinds == k) & (pair_level >= j)
            if not mask.any():
                continue
            dose = pair_dose[mask]
            d_subj = rec.subject[dose]
            amt = rec.amt_mg[dose]
            mode = rec.rate_mode[dose]
            f_p = f[d_subj]
            amount = f_p * be.asarray(amt)
            rate: Any = be.asarray(np.where(rec.rate_mg_h[dose] > 0, rec.rate_mg_h[dose], 1.0))
            duration: Any = be.asarray(np.ones(dose.size))
            if kind in ("infusion", "ss_infusion"):
                if np.any(mode == 1) and route.rate is None:
                    raise ValueError(f"dose_rate_mode: doses of route {name!r} with a modelled rate need routes[{name!r}].rate")  # fmt: skip
                if np.any(mode == 2) and route.duration is None:
                    raise ValueError(f"dose_rate_mode: doses of route {name!r} with a modelled duration need routes[{name!r}].duration")  # fmt: skip
                if np.any(mode == 1):
                    m_rate = subj(route.rate, f"routes[{name!r}].rate")[d_subj]
                    rate = be.where(be.asarray(mode == 1), m_rate, rate)
                if np.any(mode == 2):
                    m_dur = subj(route.duration, f"routes[{name!r}].duration")[d_subj]
                    duration = be.where(be.asarray(mode == 2), m_dur, amount / rate)
                    rate = be.where(be.asarray(mode == 2), amount / m_dur, rate)
                else:
                    duration = amount / rate
            lam_in = [lam[d_subj] for lam in lams_r]
            w_in = [np.ones(dose.size) if w is None else w[d_subj] for w in w_r]
            k_in = [k_[d_subj] for k_ in k_r]
            ups_in = [u[d_subj] for u in ups_s]
            args = [dt[mask], rec.ii_h[dose], lag[d_subj], amount, rate, duration, *ups_in, *lam_in, *w_in, *k_in]  # fmt: skip
            n_tr = route.n_transit

            def unpack(
                xs: list[Any], n_tr: int = n_tr, n_up: int = len(ups_in), n_eig: int = n_eig,
                n_k: int = n_k,
            ) -> tuple:  # fmt: skip
                it = iter(xs[6:])
                ups = [next(it) for _ in range(n_up)]
                if n_tr:
                    ups = [ups[0]] * n_tr + ups[1:]
                lam_x = [next(it) for _ in range(n_eig)]
                w_x = [next(it) for _ in range(n_eig)]
                k_x = [next(it) for _ in range(n_k)]
                return ups, lam_x, w_x, k_x

            if be.name == "numpy":
                ups, lam_x, w_x, k_x = unpack([be.asarray(a) for a in args])
                outs = _dose_response(be, kind, *(be.asarray(a) for a in args[:6]), ups, lam_x, w_x, k_x)  # fmt: skip
                outs = [np.broadcast_to(be.asarray(o), (dose.size,)) for o in outs]
            else:

                def build(xs: list[Any], kind: str = kind, unpack: Callable = unpack) -> list[Any]:
                    ups, lam_x, w_x, k_x = unpack(xs)
                    sb = _scalar_backend()
                    return _dose_response(sb, kind, *xs[:6], ups, lam_x, w_x, k_x)

                key = ("dose", kind, n_tr, len(ups_in), n_eig, n_k)
                n_pair = dose.size
                args = [a if _is_symbolic(a) else np.broadcast_to(np.asarray(a, float), (n_pair,)) for a in args]  # fmt: skip
                args = [a + xp.zeros(n_pair) if _is_symbolic(a) and a.ndim == 0 else a for a in args]  # fmt: skip
                outs = list(_apply_multi_kernel(key, build, args, maybe_data=tuple(range(len(args)))))  # fmt: skip
            n_pair = dose.size
            if j:  # amounts (mg) of levels j..n_lev: times the gains of the levels j+1..l
                gain: Any = None
                for i in range(1, len(outs)):
                    g = gains[j + i][d_subj]
                    gain = g if gain is None else _mul(gain, g)
                    outs[i] = _mul(outs[i], gain)
            parts.extend(outs)
            pair_flat.append(offsets[j > 0] + (pair_level[mask] - j) * n_pair + np.arange(n_pair))
            pair_obs_all.append(pair_obs[mask])
            offsets[j > 0] += (n_k + 1) * n_pair
    totals = []
    for into_metabolite, (parts, pair_flat, pair_obs_all) in collect.items():
        if parts:
            flat = parts[0] if len(parts) == 1 else xp.concatenate(parts)
            contrib = flat[np.concatenate(pair_flat)]
            totals.append(be.segment_sum(contrib, np.concatenate(pair_obs_all), layout.n_obs))
        elif into_metabolite:
            totals.append(None)
        else:
            totals.append(be.segment_sum(be.asarray(np.zeros(0)), np.zeros(0, np.int64), layout.n_obs))  # fmt: skip
    return totals[0], totals[1]


def _conc(
    be: _Backend,
    layout: DoseObsLayout,
    *,
    cl: Any,
    vc: Any,
    q: Any,
    vp: Any,
    q2: Any,
    vp2: Any,
    ka: Any,
    f_bio: Any,
    metabolites: Sequence[Metabolite],
    method: str,
    routes: Mapping[str, Route] | None = None,
) -> Any:
    if method not in ("stable", "naive"):
        raise ValueError(f"method must be 'stable' or 'naive', got {method!r}")
    if (q is None) != (vp is None) or (q2 is None) != (vp2 is None):
        raise ValueError("give q with vp and q2 with vp2")
    if q2 is not None and q is None:
        raise ValueError("a 3-compartment parent (q2, vp2) needs q and vp too")
    n_met = len(metabolites)
    if n_met > MAX_METABOLITES:
        raise ValueError(f"at most {MAX_METABOLITES} metabolites, got {n_met}")
    if layout.max_level > n_met:
        raise ValueError(
            f"observations of chain level {layout.max_level} but only {n_met} metabolite(s)"
        )
    has_depot = len(layout.terms["depot"]) > 0 and routes is None
    if has_depot and (ka is None or f_bio is None):
        raise ValueError("depot doses need ka and f_bio")
    xp = be.xp
    ns = layout.n_subject

    def subj(x: Any, name: str) -> Any:
        return be.per_subject(x, ns, name)

    # Per-subject parameters, disposition and chain.
    cl, vc = subj(cl, "cl"), subj(vc, "vc")
    q, vp, q2, vp2 = (None if v is None else subj(v, n) for v, n in ((q, "q"), (vp, "vp"), (q2, "q2"), (vp2, "vp2")))  # fmt: skip
    lams, weights = _disposition(be, cl, vc, q, vp, q2, vp2)
    n_eig = len(lams)
    k_el, coef, vol, clear = [cl / vc], [xp.ones_like(cl)], [vc], [cl]
    gains: list[Any] = [None]  # r_j k_fj: coef[j] = coef[j - 1] * gains[j]
    for j, met in enumerate(metabolites, start=1):
        name = f"metabolites[{j - 1}]"
        cl_m, v_m = subj(met.cl_m, f"{name}.cl_m"), subj(met.v_m, f"{name}.v_m")
        if met.cl_f is not None:
            k_f = subj(met.cl_f, f"{name}.cl_f") / vol[-1]
        else:
            k_f = subj(met.fm, f"{name}.fm") * clear[-1] / vol[-1]
        gains.append(subj(met.r, f"{name}.r") * k_f)
        coef.append(coef[-1] * subj(met.r, f"{name}.r") * k_f)
        k_el.append(cl_m / v_m)
        vol.append(v_m)
        clear.append(cl_m)

    if routes is not None or layout.general:
        if layout.records is None:
            raise ValueError("routes: this layout has no records (build it with build_layout)")
        resolved = _resolve_routes(layout.records, routes, ka, f_bio)
        for name, route in resolved.items():
            if route.level > n_met:
                raise ValueError(
                    f"routes[{name!r}].level: doses into chain level {route.level} but only "
                    f"{n_met} metabolite(s)"
                )
        amounts, direct = _conc_general(be, layout, resolved, subj, lams, weights, k_el, gains, method)  # fmt: skip
        n_lev = n_met + 1
        per_level = xp.stack([coef[j] / vol[j] for j in range(n_lev)], axis=1).reshape((-1,))
        at = layout.obs_subject * n_lev + layout.obs_level
        conc = NG_ML_PER_MG_L * per_level[at] * amounts
        if direct is None:
            return conc
        volume = xp.stack(vol, axis=1).reshape((-1,))
        return conc + NG_ML_PER_MG_L * direct / volume[at]

    # Per-subject table, columns [ka, lambda_1..lambda_n_eig, k_1..k_n_met, w_1..w_n_eig,
    # w_1 ka F..w_n_eig ka F], gathered column by column (see _Rows).
    zeros = xp.zeros_like(cl)
    ka_s = subj(ka, "ka") if has_depot else zeros
    ka_f = ka_s * subj(f_bio, "f_bio") if has_depot else zeros
    table = _Rows(
        be, [ka_s, *lams, *k_el[1:], *weights, *(w * ka_f for w in weights)], np.zeros(0, np.int64)
    )
    c_lam, c_k = 1, 1 + n_eig
    c_w, c_wd = c_k + n_met, c_k + n_met + n_eig

    def evaluate(t, rows, lev, extra, coefs, states, split):
        """Chain amounts (levels 0..lev) for the evaluations whose table rows are ``rows``."""
        lam_in = [rows[:, c_lam + i] for i in range(n_eig)]
        k_in = [rows[:, c_k + r] for r in range(lev)]
        if be.name != "pytensor" or method != "stable":
            return _chain_amounts(be, be.asarray(t), lam_in, k_in, extra, coefs, states, split, method)  # fmt: skip
        extra_in = [] if extra is None or isinstance(extra, str) else [extra]
        n_st = len(states)

        def build(xs: list[Any]) -> list[Any]:
            it = iter(xs[1:])
            take = [[next(it) for _ in range(k)] for k in (n_eig, lev, len(extra_in), n_eig, n_st)]  # fmt: skip
            ex = take[2][0] if extra_in else extra
            return _chain_amounts(_scalar_backend(), xs[0], take[0], take[1], ex, take[3], take[4], split)  # fmt: skip

        kind = "none" if extra is None else ("zero" if isinstance(extra, str) else "node")
        key = ("chain", n_eig, lev, kind, n_st, split)
        args = [t, *lam_in, *k_in, *extra_in, *coefs, *states]
        return _apply_multi_kernel(key, build, args, maybe_data=(0,))

    # Stage 1: end-of-infusion states of the ended infusions, per unit rate: parent per mode,
    # w_i E(T; 0, lambda_i); metabolite r: sum_i w_i E(T; 0, lambda_i, k_1..k_r).
    post = layout.terms["post"]
    top = int(post.level.max(initial=0))
    states = None
    if len(post):
        rows = table.take(layout.inf_subject)
        coefs = [rows[:, c_w + i] for i in range(n_eig)]
        outs = evaluate(layout.inf_duration_h, rows, top, "zero", coefs, [], True)
        states = _Rows(be, outs, np.zeros(0, np.int64))  # modes, then levels 1..top

    # Stage 2: one evaluation of all chain levels per distinct (subject, time since dose,
    # infusion) of each kind of term (the analytes observed at one time share it), then each
    # (observation, dose) pair takes its level's amount, times its dose, into its observation.
    parts, pair_flat, pair_scale, pair_obs = [], [], [], []
    offset = 0
    for kind in TERM_KINDS:
        ts = layout.terms[kind]
        if not len(ts):
            continue
        uniq, inverse = _unique_rows(ts.subject_idx, ts.dt_h, ts.dose_idx)
        group_level = np.zeros(len(uniq), np.int64)
        np.maximum.at(group_level, inverse, ts.level)
        for lev in np.unique(group_level):
            sel = np.flatnonzero(group_level == lev)
            position = np.full(len(uniq), -1)
            position[sel] = np.arange(sel.size)
            rows = table.take(uniq[sel, 0].astype(np.int64))
            t = uniq[sel, 1]
            st_in: list[Any] = []
            extra: Any = None
            if kind == "post":
                srows = states.take(uniq[sel, 2].astype(np.int64))
                coefs = [srows[:, i] for i in range(n_eig)]
                st_in = [srows[:, n_eig + r] for r in range(lev)]
            elif kind == "depot":
                coefs = [rows[:, c_wd + i] for i in range(n_eig)]
                extra = rows[:, 0]
            else:
                coefs = [rows[:, c_w + i] for i in range(n_eig)]
                extra = "zero" if kind == "infusing" else None
            parts.extend(evaluate(t, rows, int(lev), extra, coefs, st_in, False))
            pairs = position[inverse] >= 0
            pair_flat.append(offset + ts.level[pairs] * sel.size + position[inverse[pairs]])
            pair_scale.append(ts.scale[pairs])
            pair_obs.append(ts.obs_idx[pairs])
            offset += (int(lev) + 1) * sel.size
    if parts:
        flat = parts[0] if len(parts) == 1 else xp.concatenate(parts)
        contrib = flat[np.concatenate(pair_flat)] * be.asarray(np.concatenate(pair_scale))
        amounts = be.segment_sum(contrib, np.concatenate(pair_obs), layout.n_obs)
    else:
        amounts = be.segment_sum(be.asarray(np.zeros(0)), np.zeros(0, np.int64), layout.n_obs)

    n_lev = n_met + 1
    per_level = xp.stack([coef[j] / vol[j] for j in range(n_lev)], axis=1).reshape((-1,))
    return NG_ML_PER_MG_L * per_level[layout.obs_subject * n_lev + layout.obs_level] * amounts


def np_conc_ng_ml(
    layout: DoseObsLayout,
    *,
    cl: Any,
    vc: Any,
    q: Any = None,
    vp: Any = None,
    q2: Any = None,
    vp2: Any = None,
    ka: Any = None,
    f_bio: Any = None,
    routes: Mapping[str, Route] | None = None,
    metabolites: Sequence[Metabolite] = (),
    method: str = "stable",
) -> np.ndarray:
    """Concentrations (ng/mL) of each observation of ``layout`` (numpy reference).

    Parameters are scalars or arrays of shape (n_subject,): ``cl`` total parent clearance
    (L/h), ``vc`` central volume (L), ``q``/``vp`` and ``q2``/``vp2`` the first and second
    peripheral compartments (omit for 1-/2-compartment parents), ``ka`` (1/h) and ``f_bio``
    for depot doses, ``metabolites`` the chain (:class:`Metabolite`, level 1 first).
    ``method="naive"`` uses the textbook formula (for comparisons only). ``routes`` maps the
    layout's route names to their :class:`Route` (``"central"`` defaults to ``Route()``,
    ``"depot"`` to ``Route(ka=ka, f=f_bio)``); given, or for a layout with NONMEM's other
    records, every dose is evaluated by the general per-pair dose response.
    """
    with np.errstate(over="ignore", under="ignore"):
        return _conc(
            _NP,
            layout,
            cl=cl,
            vc=vc,
            q=q,
            vp=vp,
            q2=q2,
            vp2=vp2,
            ka=ka,
            f_bio=f_bio,
            metabolites=metabolites,
            method=method,
            routes=routes,
        )


def pt_conc_ng_ml(
    layout: DoseObsLayout,
    *,
    cl: Any,
    vc: Any,
    q: Any = None,
    vp: Any = None,
    q2: Any = None,
    vp2: Any = None,
    ka: Any = None,
    f_bio: Any = None,
    routes: Mapping[str, Route] | None = None,
    metabolites: Sequence[Metabolite] = (),
    method: str = "stable",
) -> Any:
    """PyTensor twin of :func:`np_conc_ng_ml`: a symbolic vector of shape (layout.n_obs,).

    Parameters may be PyTensor tensors (e.g. PyMC random variables), numpy arrays or scalars.
    No loop over subjects, no ODE solver: gathers, element-wise arithmetic and one segment sum.
    """
    return _conc(
        _pt_backend(),
        layout,
        cl=cl,
        vc=vc,
        q=q,
        vp=vp,
        q2=q2,
        vp2=vp2,
        ka=ka,
        f_bio=f_bio,
        metabolites=metabolites,
        method=method,
        routes=routes,
    )


__all__ = [
    "GENERAL_KINDS",
    "MAX_METABOLITES",
    "ROUTES",
    "TAYLOR_SPREAD",
    "TAYLOR_TERMS",
    "TERM_KINDS",
    "DoseObsLayout",
    "DoseRecords",
    "Metabolite",
    "Route",
    "TermSet",
    "build_layout",
    "expand_additional_doses",
    "np_conc_ng_ml",
    "np_disposition",
    "np_exp_conv",
    "np_exp_conv_naive",
    "pt_conc_ng_ml",
    "pt_disposition",
    "pt_exp_conv",
    "pt_exp_conv_naive",
]
