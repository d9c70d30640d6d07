"""Fitting: NUTS through nutpie or PyMC, the compiled-model cache, the PK and response fits,
and the posterior files they write.
"""

from .nutpie_compile import (
    NUTPIE_VERSIONS,
    compile_pymc_model,
    supported,
)
from .pk_fit import (
    describe,
    fit_pk,
    is_innovation,
    log_likelihood,
    prior_typical,
    record_variables,
    sample_pk,
)
from .posterior_files import (
    RUN_ATTRS,
    load_idata,
    run_timings,
    save_idata,
)
from .response_fit import (
    ResponseFitter,
    fit_response,
    load_response_idata,
    loo_refitter,
)
from .sampling import (
    PROGRESS_SECONDS,
    Nuts,
    NutsRun,
    Progress,
    run_nuts,
    standard_sample_stats,
)

__all__ = [
    "NUTPIE_VERSIONS",
    "PROGRESS_SECONDS",
    "RUN_ATTRS",
    "Nuts",
    "NutsRun",
    "Progress",
    "ResponseFitter",
    "compile_pymc_model",
    "describe",
    "fit_pk",
    "fit_response",
    "is_innovation",
    "load_idata",
    "load_response_idata",
    "log_likelihood",
    "loo_refitter",
    "prior_typical",
    "record_variables",
    "run_nuts",
    "run_timings",
    "sample_pk",
    "save_idata",
    "standard_sample_stats",
    "supported",
]
