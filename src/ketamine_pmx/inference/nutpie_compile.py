"""nutpie's compiled PyMC model, with its C entry points cached on disk.

``nutpie.compile_pymc_model`` (0.16) compiles the log density and its gradient with
PyTensor's numba backend, then wraps the result in two ``numba.cfunc`` entry points (log
density + gradient, and the expansion of a draw into the stored variables) that the Rust
sampler calls. PyTensor caches its compiled function on disk, but nutpie's wrappers are
closures over per-process objects, so numba cannot cache them: every process links the whole
compiled log density into a new wrapper and runs LLVM's optimisation and code generation over
all of it again, about 50 s for the default PK model on 2 cores.

:func:`compile_pymc_model` builds the same compiled model (nutpie's own pieces: the PyTensor
functions, the shared-data record, the extraction of shared arrays, the initial points), with
the two entry points written as source code whose only free names are globals, compiled by
``numba.cfunc(cache=True)`` under a key (PyTensor's cache key of each compiled function, the
dimensions, the shared-data layout, nutpie's and numba's versions, this module's source).
PyTensor's numba cache locator files them in PyTensor's cache directory under that key, so a
second process compiling the same model loads them. The entry points return nutpie's status
codes (0 success, 1 error, 3 non-finite gradient, 4 non-finite log density, -1 wrong
dimension). A model whose PyTensor functions have no cache key (an Op without one), or an
unexpected nutpie version, falls back to ``nutpie.compile_pymc_model``.

Each entry point calls its own renamed copies of the functions linked into it (see
:func:`_private_copies`), so the draws of a seed are the same whether the entry point was
compiled in this process or loaded from the cache, and whichever cache directory it came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

#: nutpie versions whose internals this module uses.
NUTPIE_VERSIONS = ("0.16.",)

_LOGP_SRC = """
def {name}(dim, x_, out_, logp_, user_data_):
    if dim != N_DIM:
        return -1
    try:
        x = numba.carray(x_, (N_DIM,))
        out = numba.carray(out_, (N_DIM,))
        logp = numba.carray(logp_, ())
        logp_val, grad = extract(x, user_data_)
        logp[()] = logp_val
        out[...] = grad
        if not np.all(np.isfinite(out)):
            return 3
        if not np.isfinite(logp_val):
            return 4
    except Exception:
        return 1
    return 0
"""

_EXPAND_SRC = """
def {name}(dim, expanded, x_, out_, user_data_):
    if dim != N_DIM:
        return -1
    if expanded != N_EXPANDED:
        return -1
    try:
        x = numba.carray(x_, (N_DIM,))
        out = numba.carray(out_, (N_EXPANDED,))
        (values,) = extract(x, user_data_)
        out[...] = values
    except Exception:
        return -2
    return 0
"""


def supported() -> bool:
    """True when the installed nutpie is a version whose internals this module knows, and
    numba's code library has the final-optimisation step that :func:`_private_copies` wraps."""
    import nutpie
    from numba.core.codegen import CPUCodeLibrary

    return nutpie.__version__.startswith(NUTPIE_VERSIONS) and callable(
        getattr(CPUCodeLibrary, "_optimize_final_module", None)
    )


def _pytensor_key(fn: Any) -> str | None:
    """PyTensor's numba cache key of a compiled function (None: not cacheable)."""
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    jit_fn = getattr(fn.vm, "jit_fn", None)
    py_func = getattr(jit_fn, "py_func", None)
    return None if py_func is None else CACHED_SRC_FUNCTIONS.get(py_func)


@contextlib.contextmanager
def _private_copies(name: str, key: str) -> Iterator[None]:
    """While compiling the entry point ``name``, the functions linked into its library get
    names of their own (``key`` appended), so that it calls its own copies.

    numba links a copy of each callee (the PyTensor log density and the functions it calls)
    into a caller's library under the callee's symbol, as a weak definition, and the JIT
    resolves a symbol defined twice to the first definition loaded in the process. A process
    that compiles the model (cold cache) has loaded each callee's own library first; a process
    that loads the entry point from the cache has not. So the same entry point ran different,
    differently optimised copies of its callees, which under PyTensor's fast-math flags differ
    in the last bits of the gradient, and NUTS turns that into different draws. With names of
    their own the entry point runs its own code, the same whether compiled or loaded.
    """
    from numba.core.codegen import CPUCodeLibrary

    optimize = CPUCodeLibrary._optimize_final_module
    suffix = f".{key[:16]}"

    def patched(library: Any) -> None:
        defined = [f for f in library._final_module.functions if not f.is_declaration]
        # numba's C wrapper of the entry point: "cfunc." + the mangled name, which holds ``name``
        if any(f.name.startswith("cfunc.") and name in f.name for f in defined):
            for f in defined:
                if f.name.startswith("_ZN") and not f.name.endswith(suffix):
                    f.name = f.name + suffix
        optimize(library)

    CPUCodeLibrary._optimize_final_module = patched
    try:
        yield
    finally:
        CPUCodeLibrary._optimize_final_module = optimize


def _entry_point(src: str, name: str, env: dict[str, Any], sig: Any, key: str) -> Any:
    """``numba.cfunc`` of generated source, cached on disk under ``key``, its callees private."""
    import numba
    from pytensor.link.numba.cache import compile_numba_function_src

    py_func = compile_numba_function_src(src.format(name=name), name, global_env=env, cache_key=key)
    with warnings.catch_warnings(), _private_copies(name, key):
        warnings.filterwarnings("ignore", category=numba.NumbaWarning)
        return numba.cfunc(sig, cache=True)(py_func)


def compile_pymc_model(model: Any) -> Any:
    """A ``nutpie`` compiled model of ``model`` (numba backend), entry points cached on disk.

    Equivalent to ``nutpie.compile_pymc_model(model)`` with its defaults (support-point
    initial values jittered, every variable stored).
    """
    import nutpie

    if not supported():
        return nutpie.compile_pymc_model(model)
    import numba
    import numpy as np
    from nutpie import compile_pymc as cp
    from pymc.initial_point import make_initial_point_fn

    initial_point_fn = cp._wrap_with_lock(
        make_initial_point_fn(
            model=model,
            overrides=None,
            default_strategy="support_point",
            jitter_rvs=set(model.free_RVs),
            return_transformed=True,
        )
    )
    n_dim, n_expanded, logp_fn_pt, expand_fn_pt, point_fn, shape_info = cp._make_functions(
        model,
        mode="NUMBA",
        compute_grad=True,
        join_expanded=True,
        pymc_initial_point_fn=initial_point_fn,
        var_names=None,
    )
    keys = (_pytensor_key(logp_fn_pt), _pytensor_key(expand_fn_pt))
    if None in keys:  # some Op of the model has no cache key: nutpie's own (uncached) path
        return nutpie.compile_pymc_model(model)

    shared_data, shared_vars = {}, {}
    for val in [*logp_fn_pt.get_shared(), *expand_fn_pt.get_shared()]:
        if val.name in shared_data and val is not shared_vars[val.name]:
            raise ValueError(f"Shared variables must have unique names: {val.name}")
        shared_data[val.name] = np.array(val.get_value(), order="C", copy=True)
        shared_vars[val.name] = val
    for val in shared_data.values():
        val.flags.writeable = False
    user_data = cp.make_user_data(shared_vars, shared_data)
    logp_names = {v.name for v in logp_fn_pt.get_shared()}
    layout = [(name, str(arr.dtype), arr.ndim, name in logp_names) for name, arr in shared_data.items()]  # fmt: skip
    salt = (
        nutpie.__version__,
        numba.__version__,
        hashlib.sha256(
            inspect.getsource(inspect.getmodule(compile_pymc_model)).encode()
        ).hexdigest(),
        str(user_data.dtype),
        tuple(layout),
        n_dim,
        n_expanded,
    )
    # __name__: numba rebuilds a cached function's environment by importing its module
    env = {"__name__": __name__, "numba": numba, "np": np, "N_DIM": n_dim, "N_EXPANDED": n_expanded}  # fmt: skip
    double, u64 = numba.types.double, numba.types.uint64
    ptr = numba.types.CPointer(double)
    sigs = {
        "logp": numba.types.int64(u64, ptr, ptr, ptr, numba.types.voidptr),
        "expand": numba.types.int64(u64, u64, ptr, ptr, numba.types.voidptr),
    }

    def entry_point(kind: str, fn_pt: Any, src: str, pytensor_key: str) -> Any:
        names = [v.name for v in fn_pt.get_shared()]
        extract = cp.make_extraction_fn(fn_pt.vm.jit_fn, shared_data, names, user_data.dtype)
        key = hashlib.sha256(repr((kind, pytensor_key, salt)).encode()).hexdigest()
        return _entry_point(src, f"nutpie_{kind}", {**env, "extract": extract}, sigs[kind], key)

    logp_c = entry_point("logp", logp_fn_pt, _LOGP_SRC, keys[0])
    expand_c = entry_point("expand", expand_fn_pt, _EXPAND_SRC, keys[1])
    dims, coords = cp._prepare_dims_and_coords(model, shape_info)
    return cp.CompiledPyMCModel(
        _n_dim=n_dim,
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info, strict=True)},
        compiled_logp_func=logp_c,
        compiled_expand_func=expand_c,
        initial_point_func=point_fn,
        shared_data=shared_data,
        user_data=user_data,
        n_expanded=n_expanded,
        shape_info=shape_info,
        logp_func=logp_fn_pt,
        expand_func=expand_fn_pt,
    )
