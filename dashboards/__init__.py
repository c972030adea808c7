"""Dashboards built from MLflow alone: learning curves, ablation tables, LR stability, masking ratios.

`study_outcome` (`build_study_dashboard` and the study's answer in a few lines) is what the platform calls
when a sweep ends; `avmae dashboard STUDY` rebuilds the same page any time. Nothing here imports Ray: a study
is read back from MLflow only. The names below load on first use, so `avmae --help` does not pay for
importing MLflow and plotly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"build_study_dashboard": "avmae.dashboards.report", "study_outcome": "avmae.dashboards.report",
            "StudyNotFound": "avmae.dashboards.collect"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
