"""Hyperparameter importances the way Optuna computes them, from trials read back out of MLflow.

The sweep's own Optuna study lives inside Ray and is gone when the sweep ends; rebuilding an in-memory study
from the logged trials lets `optuna.importance` (fANOVA) answer "which knob mattered" from MLflow alone.
"""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
from avmae.dashboards.collect import StudyData
from avmae.dashboards.summary import cell_axes, searched_params
from avmae.platform.tracking.layout import TrialStatus
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

MIN_TRIALS = 3  # fANOVA's forest needs a few points before its answer means anything


class NotEnoughTrials(ValueError):
    """Importances cannot be computed (yet); the message says why, for the dashboard to show."""


def param_importances(data: StudyData, target: str) -> dict[str, float]:
    """fANOVA importance for `target` of each cell axis and searched parameter that varies across the
    finished trials, normalised to sum to 1."""
    trials = data.trials
    done = trials[(trials["status"] == TrialStatus.FINISHED.value) & np.isfinite(trials[target])]
    candidates = dict.fromkeys([*cell_axes(data), *searched_params(data)])
    names = [n for n in candidates if n in done and done[n].dropna().nunique() > 1]
    done = done.dropna(subset=names)  # a trial that lacks a parameter cannot place it
    if len(done) < MIN_TRIALS:
        raise NotEnoughTrials(f"{len(done)} finished trial(s) with {target}; importances need {MIN_TRIALS}")
    if not names:
        raise NotEnoughTrials("no parameter varies across the finished trials")
    if done[target].nunique() == 1:  # fANOVA would raise "zero total variance in all trees"
        raise NotEnoughTrials(
            f"importance not defined: every finished trial has the same {target} ({done[target].iloc[0]:g})"
        )
    distributions = {name: _distribution(done[name]) for name in names}
    study = _quiet_study()
    for _, row in done.iterrows():
        params = {n: _value(row[n], distributions[n]) for n in names}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[target]))
        )
    return get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=names)


def _quiet_study() -> optuna.Study:
    """An in-memory study, without Optuna's "new study created" line in the middle of a CLI's output."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)


def _distribution(values: pd.Series) -> BaseDistribution:
    """Numbers become a float range (log-scaled when they span a decade or more, like lr); else categories."""
    if pd.api.types.is_numeric_dtype(values):
        low, high = float(values.min()), float(values.max())
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return CategoricalDistribution(sorted(str(v) for v in values.dropna().unique()))


def _value(value: object, distribution: BaseDistribution) -> object:
    return float(value) if isinstance(distribution, FloatDistribution) else str(value)


