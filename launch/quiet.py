"""Library noise filtered once at start-up of every `glotta` process (shown again with -v).

Megatron-core, Apex, Transformer Engine and torch warn about optional kernels, deprecations and
CPU fallbacks on every start, once per rank; none of it is actionable for a glotta user. Our own
warnings (glotta.*) and errors are never filtered.
"""
from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("megatron", "apex", "transformer_engine", "torch", "pyarrow", "mlflow", "alembic")
VERBOSE_ENV = "GLOTTA_VERBOSE"


def verbose_requested(flag: bool) -> bool:
    """-v on this command, or on the `glotta pipeline run` that started it (passed down in the env)."""
    if flag:
        os.environ[VERBOSE_ENV] = "1"
    return flag or os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # else mlflow logs INFO on every store open
    pattern = r"(%s)(\..*)?$" % "|".join(LIBRARIES)
    warnings.filterwarnings("ignore", module=pattern)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
