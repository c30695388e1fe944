"""Typed façade over the C++ extension glotta._native (built at install time by setup.py)."""
from __future__ import annotations

try:
    from glotta._native import TarError, TarReader
except ImportError as e:  # pragma: no cover - only when the package was not installed/built
    raise ImportError(
        "glotta._native is not built: install the package with `pip install -e .` "
        "(needs a C++17 compiler and the Python headers)"
    ) from e

__all__ = ["TarError", "TarReader"]
