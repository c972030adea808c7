"""Dashboards, checked on their data: a realistic study is logged to a real SQLite MLflow store with the
platform's own tracking code, read back, and every figure's traces are compared with what was logged."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from avmae.dashboards import StudyNotFound, build_study_dashboard, figures, robust, stats
from avmae.dashboards.budget_view import budget_view
from avmae.dashboards.cli import dashboard
from avmae.dashboards.collect import REPEAT, StudyData, best_col, collect_study, score_columns
from avmae.dashboards.cost import (
    budget_text,
    cell_costs,
    cost_lines,
    matched_verdict,
    resources,
    scores_and_costs,
)
from avmae.dashboards.importance import NotEnoughTrials, param_importances
from avmae.dashboards.power import next_run_paired
from avmae.dashboards.summary import cell_summary, configurations
from avmae.dashboards.verdicts import (
    BadSetting,
    gain_text,
    gains_lines,
    leads_lines,
    lr_verdicts,
    unsettled_gains,
)
from avmae.platform.tracking import layout as T
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
STEPS, STEPS_PER_EPOCH, SECONDS_PER_STEP = 12, 4, 300.0
FINISHED, PRUNED, DIVERGED, FAILED, RUNNING = (s.value for s in (
    T.TrialStatus.FINISHED, T.TrialStatus.PRUNED, T.TrialStatus.DIVERGED, T.TrialStatus.FAILED,
    T.TrialStatus.RUNNING))


@dataclass(frozen=True)
class Trial:
    """One trial to log, and the values it logs, so tests know the truth without reading MLflow."""

    id: str
    fusion: str
    decoder: str
    objective: str
    lr: float
    mask_audio: float = 0.8
    mask_video: float = 0.9
    seed: int = 0
    repeat: int | None = None  # k of a configuration run with several seeds (seed = k); None: older study
    jitter: float = 0.0  # the trial's own probe noise, on top of the seed effect that repeat k shares
    fate: str = FINISHED
    stop: int = STEPS  # steps that ran: a diverged trial's first NaN step; a failed one crashed mid-epoch

    @property
    def cell(self) -> str:
        return T.cell_key({"fusion": self.fusion, "decoder": self.decoder, "objective": self.objective})

    @property
    def steps(self) -> list[int]:
        """Steps with a finite loss in MLflow: reports come per epoch, so a crash loses its epoch."""
        done = self.stop if self.fate == DIVERGED else self.stop // STEPS_PER_EPOCH * STEPS_PER_EPOCH
        return list(range(done))

    @property
    def epochs(self) -> list[int]:
        """Epochs (1-based, as the platform counts them) with a real validation loss."""
        return list(range(1, len(self.steps) // STEPS_PER_EPOCH + 1))

    def loss(self, step: int, part: str = "") -> float:
        if self.fate == DIVERGED and step >= self.stop:
            return math.nan
        if self.fate == DIVERGED and step == self.stop - 1:
            return 3.0  # the spike before the NaN
        base = 0.30 + 0.05 * (self.objective == "inpainting") + 0.02 * abs(math.log10(self.lr) + 4)
        total = base + 0.7 * math.exp(-step / 3) + 0.001 * self.seed
        return total * {"": 1.0, "audio": 1.1, "video": 0.9}[part]

    def grad_norm(self, step: int) -> float:
        """Flat, but 30x at the loss spike just before a trial diverges: one grad-norm spike."""
        return 30.0 if self.fate == DIVERGED and step == self.stop - 1 else 1.0

    def val_loss(self, epoch: int) -> float:
        return self.loss(epoch * STEPS_PER_EPOCH - 1) + 0.02

    def score(self, modality: str) -> float:
        av = (0.70 + 0.05 * (self.fusion == "mid") + 0.03 * (self.decoder == "shared")
              + 0.02 * (self.objective == "joint") - 0.01 * abs(math.log10(self.lr) + 4) + 0.01 * self.seed
              + 0.02 * (self.mask_video - 0.8) + 0.01 * (self.fusion == "late") + self.jitter)
        return av - {"av": 0.0, "audio": 0.1, "video": 0.15}[modality]


SWEEP = [
    Trial("0", "early", "separate", "joint", 1e-4),
    Trial("1", "early", "separate", "joint", 1e-3, mask_audio=0.7),
    Trial("2", "early", "shared", "joint", 1e-4, mask_video=0.8),
    Trial("3", "early", "shared", "joint", 1e-3),
    Trial("4", "mid", "separate", "joint", 1e-4, mask_audio=0.6),
    Trial("5", "mid", "separate", "joint", 1e-3, mask_video=0.7),
    Trial("6", "mid", "shared", "joint", 1e-4),
    Trial("7", "mid", "shared", "joint", 1e-3, fate=FAILED, stop=6),
    Trial("8", "early", "separate", "inpainting", 1e-4, mask_audio=0.9),
    Trial("9", "early", "separate", "inpainting", 1e-3, fate=DIVERGED, stop=6),
    Trial("10", "early", "shared", "inpainting", 1e-4, mask_video=0.95),
    Trial("11", "early", "shared", "inpainting", 3e-4, fate=PRUNED, stop=4),
    Trial("12", "mid", "separate", "inpainting", 1e-4, mask_audio=0.5),
    Trial("13", "mid", "shared", "inpainting", 1e-3, fate=DIVERGED, stop=7),
    Trial("14", "mid", "shared", "inpainting", 1e-4, fate=PRUNED, stop=8),
    Trial("15", "early", "separate", "joint", 1e-4, seed=1),
    Trial("16", "late", "separate", "joint", 3e-4),
]
EDGE_STUDIES = {
    "one-trial": [Trial("0", "mid", "shared", "joint", 1e-4)],
    "all-diverged": [Trial("0", "early", "shared", "inpainting", 1e-3, fate=DIVERGED, stop=5),
                     Trial("1", "mid", "shared", "inpainting", 3e-3, fate=DIVERGED, stop=2)],
    "still-running": [Trial("0", "mid", "shared", "joint", 1e-4),
                      Trial("1", "mid", "shared", "joint", 1e-3, fate=RUNNING, stop=8)],
    "no-trials": [],
}
# A study with repeats: 3 seeds of every configuration, an LR grid, paired across cells. Planted truth: in
# joint, mid fusion beats early by 0.05 (every seed); in inpainting, early and shared fusion score the same
# (only each trial's own noise differs; with this draw of it the paired test gives p = 0.3: how often such
# noise reads as a difference is tests/test_stats.py's business), and lr 1.6e-3 diverges in every repeat.
REPEATS, REPEAT_LRS = 3, (1e-4, 4e-4, 1.6e-3)
_noise = iter(np.random.default_rng(0).normal(0, 0.004, 64))
REPEATED = [
    Trial(f"{objective[0]}{fusion}-{lr:g}-{k}", fusion, "shared", objective, lr, seed=k, repeat=k,
          jitter=float(next(_noise)), **({"fate": DIVERGED, "stop": 6 + k} if objective == "inpainting"
                                          and lr == REPEAT_LRS[-1] else {}))
    for objective, fusions in (("joint", ("early", "mid")), ("inpainting", ("early", "shared")))
    for fusion in fusions for lr in REPEAT_LRS for k in range(REPEATS)
]
# Reference probe scores logged on the study run, per repeat k: baseline -> modality -> value at k.
BASELINE_SCORES = {"random_init": {"av": [0.30, 0.32, 0.31], "audio": [0.25, 0.26, 0.24],
                                   "video": [0.12, 0.10, 0.11]},
                   "raw_input": {"av": [0.52, 0.50, 0.51], "audio": [0.45, 0.47, 0.46],
                                 "video": [0.20, 0.21, 0.22]}}
STILL_OPEN = {"still-running", "no-trials"}  # studies whose parent run is left RUNNING
# What the platform reports as a diverged trial's `spec.metric` (finite, so Optuna and ASHA rank it last);
# with metric val/loss it reaches MLflow as that epoch's val/loss.
DIVERGED_PLACEHOLDER = 1e6


def write_study(client: MlflowClient, study: str, trials: list[Trial], root: Path, running: bool = False
                ) -> str:
    """Log a study the way the platform does; the experiment's artifacts go under `root`, not the cwd."""
    client.create_experiment(study, artifact_location=(root / "artifacts" / study).as_uri())
    config = {"name": study, "metric": T.VAL_LOSS, "axes": {"objective": ["joint", "inpainting"]},
              "search": {"lr": {"dist": "range", "low": 1e-4, "high": 3e-3, "log": True}}}
    parent = T.start_study_run(client, study, config)
    for trial in trials:
        _write_trial(client, parent, trial)
    if not running:
        T.end_study_run(client, parent)
    return parent


def _write_trial(client: MlflowClient, parent: str, trial: Trial) -> None:
    """As the platform's Tune callback does: per epoch, the step history, then the epoch's metrics."""
    params = {"fusion": trial.fusion, "decoder": trial.decoder, "objective": trial.objective, "lr": trial.lr,
              "mask_ratio_audio": trial.mask_audio, "mask_ratio_video": trial.mask_video, "preset": "tiny",
              "seed": trial.seed, "optim": {"weight_decay": 0.05}}
    cell = {"fusion": trial.fusion, "decoder": trial.decoder, "objective": trial.objective}
    if trial.repeat is not None:  # the platform logs the repeat index as a tag and a param
        params["repeat"] = trial.repeat
    run = T.start_trial_run(client, parent, trial.id, cell, params)
    if trial.repeat is not None:
        client.set_tag(run, T.REPEAT_TAG, str(trial.repeat))
    for epoch in range(1, STEPS // STEPS_PER_EPOCH + 1):
        steps = range((epoch - 1) * STEPS_PER_EPOCH, epoch * STEPS_PER_EPOCH)
        history = [{"step": s, T.TRAIN_LOSS: trial.loss(s), T.TRAIN_LOSS_AUDIO: trial.loss(s, "audio"),
                    T.TRAIN_LOSS_VIDEO: trial.loss(s, "video"), T.TRAIN_LR: trial.lr,
                    T.TRAIN_GRAD_NORM: trial.grad_norm(s), T.TRAIN_CLIPS_PER_S: 120.0}
                   for s in steps if s <= trial.stop]
        if trial.fate == DIVERGED and trial.stop in steps:  # the NaN record ends the trial
            T.log_history(client, run, history)
            T.log_metrics(client, run, {T.EPOCH: epoch, T.DIVERGED_AT_STEP: trial.stop,
                                        T.VAL_LOSS: DIVERGED_PLACEHOLDER}, epoch)
            break
        if epoch not in trial.epochs:  # pruned or running: not reached; failed: crashed before reporting
            break
        T.log_history(client, run, history)
        T.log_metrics(client, run, {
            T.EPOCH: epoch, T.VAL_LOSS: trial.val_loss(epoch), T.VAL_LOSS_AUDIO: trial.val_loss(epoch) * 1.1,
            T.VAL_LOSS_VIDEO: trial.val_loss(epoch) * 0.9, T.N_BROKEN: 0,
            T.TRAIN_SECONDS: SECONDS_PER_STEP * (steps[-1] + 1),  # cumulative, as the trainer reports it
        }, epoch)
    if trial.fate == FINISHED:
        probes = {T.probe_metric(m, "acc"): trial.score(m) for m in ("av", "audio", "video")}
        T.log_metrics(client, run, probes, STEPS // STEPS_PER_EPOCH)
    if trial.fate != RUNNING:
        T.end_trial_run(client, run, T.TrialStatus(trial.fate))


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    write_study(client, "sweep", SWEEP, root)
    for name, trials in EDGE_STUDIES.items():
        write_study(client, name, trials, root, running=name in STILL_OPEN)
    parent = write_study(client, "repeats", REPEATED, root)
    for baseline, scores in BASELINE_SCORES.items():
        for k in range(REPEATS):
            T.log_metrics(client, parent, {T.baseline_metric(baseline, T.probe_metric(m, "acc")): v[k]
                                           for m, v in scores.items()}, step=k)
    return uri


@pytest.fixture(scope="session")
def repeated(store: str) -> StudyData:
    return collect_study(MlflowClient(tracking_uri=store), "repeats")


@pytest.fixture(scope="session")
def sweep(store: str) -> StudyData:
    return collect_study(MlflowClient(tracking_uri=store), "sweep")


def by_id(trial_id: str) -> Trial:
    return next(t for t in SWEEP if t.id == trial_id)


def traces(fig: go.Figure, role: str, **meta: str) -> list:
    return [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("role") == role
            and all(t.meta.get(k) == v for k, v in meta.items())]


def subplot_of(fig: go.Figure, trace) -> tuple[int, int]:
    """(row, col) of the subplot a trace is drawn in."""
    rows, cols = fig._get_subplot_rows_columns()
    for r in rows:
        for c in cols:
            sub = fig.get_subplot(r, c)
            if sub is not None and sub.xaxis.plotly_name.replace("axis", "") == (trace.xaxis or "x"):
                return r, c
    raise AssertionError(f"no subplot for {trace.xaxis}")


# --- collect ---------------------------------------------------------------------------------------------

def test_trials_frame_has_one_row_per_trial_with_params_status_and_scores(sweep: StudyData) -> None:
    trials = sweep.trials.set_index("trial_id")
    assert sorted(trials.index, key=int) == [t.id for t in SWEEP]
    assert not sweep.partial and sweep.parent_status == "FINISHED"
    for t in SWEEP:
        row = trials.loc[t.id]
        assert (row["status"], row["cell"], row["fusion"], row["objective"]) == (t.fate, t.cell, t.fusion,
                                                                                 t.objective)
        assert row["lr"] == pytest.approx(t.lr) and row["mask_ratio_video"] == pytest.approx(t.mask_video)
        assert row["optim.weight_decay"] == pytest.approx(0.05)  # nested params arrive flattened
        assert row[best_col(T.TRAIN_LOSS)] == pytest.approx(min(t.loss(s) for s in t.steps))
        assert row[T.TRAIN_LOSS] == pytest.approx(t.loss(t.steps[-1]))  # final: the last finite value
        # A diverged trial's placeholder val/loss is no measurement: its final value is the last real one.
        assert row[T.VAL_LOSS] == pytest.approx(t.val_loss(t.epochs[-1]))
        if t.fate == FINISHED:
            assert row[T.probe_metric("video", "acc")] == pytest.approx(t.score("video"))
            assert row["compute_s"] == pytest.approx(SECONDS_PER_STEP * STEPS)
        else:
            assert math.isnan(row[T.probe_metric("av", "acc")])
        if t.fate == DIVERGED:
            assert row["diverged_step"] == t.stop
    assert pd.api.types.is_float_dtype(sweep.trials["lr"])
    assert {"lr", "mask_ratio_audio", "seed", "preset", "fusion"} <= set(sweep.params)


def test_curves_have_one_row_per_trial_and_step_and_stop_at_divergence(sweep: StudyData) -> None:
    curves = sweep.curves
    assert not curves.duplicated(["trial_id", "step"]).any()
    diverged = curves[curves["trial_id"] == "9"]
    assert list(diverged["step"]) == list(range(7))  # lr is still logged at the NaN step ...
    assert list(diverged.dropna(subset=[T.TRAIN_LOSS])["step"]) == list(range(6))  # ... the NaNs are not
    assert diverged[T.TRAIN_LOSS].iloc[5] == pytest.approx(3.0)
    assert list(curves[curves["trial_id"] == "0"][T.TRAIN_LOSS_AUDIO]) == pytest.approx(
        [by_id("0").loss(s, "audio") for s in range(STEPS)])
    epochs = sweep.epochs
    for t in SWEEP:
        logged = epochs[epochs["trial_id"] == t.id]
        assert list(logged["epoch"]) == t.epochs  # a diverged epoch's placeholder is left out
        assert list(logged[T.VAL_LOSS]) == pytest.approx([t.val_loss(e) for e in t.epochs])


# --- figures ---------------------------------------------------------------------------------------------

def test_learning_curves_one_line_per_trial_in_its_facet_coloured_by_lr(sweep: StudyData) -> None:
    fig = figures.learning_curves(sweep)
    fusions, objectives = ["early", "mid", "late"], ["joint", "inpainting"]
    curves = {t.meta["trial_id"]: t for t in traces(fig, "curve", metric=T.TRAIN_LOSS)}
    assert set(curves) == {t.id for t in SWEEP}
    for t in SWEEP:
        trace = curves[t.id]
        assert subplot_of(fig, trace) == (fusions.index(t.fusion) + 1, objectives.index(t.objective) + 1)
        assert list(trace.x) == t.steps and list(trace.y) == pytest.approx([t.loss(s) for s in t.steps])
        assert trace.visible is True
    assert curves["0"].line.color == curves["2"].line.color != curves["1"].line.color  # same lr, same colour
    assert curves["11"].line.dash == "dot" and curves["7"].line.dash == "dashdot"  # pruned, failed
    # The switchable views: train total/audio/video vs step, val total/audio/video vs epoch.
    menu = fig.layout.updatemenus[0]
    assert [b.label for b in menu.buttons] == [T.TRAIN_LOSS, T.TRAIN_LOSS_AUDIO, T.TRAIN_LOSS_VIDEO,
                                               T.VAL_LOSS, T.VAL_LOSS_AUDIO, T.VAL_LOSS_VIDEO]
    audio = menu.buttons[1].args[0]["visible"]
    assert all(shown == (not isinstance(tr.meta, dict) or tr.meta.get("metric") in (None, T.TRAIN_LOSS_AUDIO))
               for shown, tr in zip(audio, fig.data, strict=True))
    assert fig.layout.yaxis.type == "log"
    assert traces(fig, "lr_colorbar")[0].marker.colorbar.title.text == "lr"


def test_diverged_trials_are_marked_where_they_diverged(sweep: StudyData) -> None:
    fig = figures.learning_curves(sweep)
    marks = {t.meta["trial_id"]: t for t in traces(fig, "diverged", metric=T.TRAIN_LOSS)}
    assert set(marks) == {"9", "13"}
    for trial_id, mark in marks.items():
        t = by_id(trial_id)
        assert list(mark.x) == [t.stop] and list(mark.y) == pytest.approx([3.0])
        assert subplot_of(fig, mark) == subplot_of(fig, traces(fig, "curve", trial_id=trial_id,
                                                               metric=T.TRAIN_LOSS)[0])


def test_lr_stability_per_objective_on_a_log_axis_with_spread_and_diverged_runs(sweep: StudyData) -> None:
    fig = figures.lr_stability(sweep)
    assert all(fig.layout[a].type == "log" for a in fig.layout if a.startswith("xaxis"))
    score = T.probe_metric("av", "acc")
    for col, objective in enumerate(["joint", "inpainting"], start=1):
        done = [t for t in SWEEP if t.objective == objective and t.fate == FINISHED]
        lrs = sorted({t.lr for t in done})
        mean = next(t for t in traces(fig, "mean", metric=score) if subplot_of(fig, t) == (2, col))
        assert list(mean.x) == pytest.approx(lrs)
        expected = [np.mean([t.score("av") for t in done if t.lr == lr]) for lr in lrs]
        assert list(mean.y) == pytest.approx(expected)
        intervals = [stats.mean_ci([t.score("av") for t in done if t.lr == lr]) for lr in lrs]
        assert list(mean.error_y.array) == pytest.approx([i.hi - i.mean if i.n > 1 else 0 for i in intervals])
        ended = [t for t in SWEEP if t.objective == objective and t.fate in (FINISHED, PRUNED, DIVERGED)]
        diverged_at = [sum(t.lr == lr and t.fate == DIVERGED for t in ended) for lr in lrs]
        assert [list(c) for c in mean.customdata] == [  # n behind each point, diverged / ended, spikes
            [sum(t.lr == lr for t in done), d, sum(t.lr == lr for t in ended), d]  # one spike per divergence
            for lr, d in zip(lrs, diverged_at, strict=True)]
    diverged = [t for t in traces(fig, DIVERGED) if subplot_of(fig, t)[1] == 2]
    assert {row[0] for t in diverged for row in t.customdata} == {"9", "13"}
    assert all(list(t.x) == [1e-3, 1e-3] for t in diverged)
    loss_marks = next(t for t in diverged if subplot_of(fig, t)[0] == 1)
    top = max(tr for t in traces(fig, FINISHED) + traces(fig, PRUNED) if subplot_of(fig, t) == (1, 2)
              for tr in t.y)
    assert loss_marks.y[0] > top  # drawn above every finite final loss, not dropped
    pruned = next(t for t in traces(fig, PRUNED) if subplot_of(fig, t) == (1, 2))
    assert list(pruned.customdata) == ["11", "14"] and pruned.marker.symbol == "circle-open"
    assert "1 failed" in fig.layout.title.text


def test_ablation_table_cells_scores_counts_and_best_cell(sweep: StudyData) -> None:
    fig = figures.ablation_table(sweep)
    fusions, decoders = ["early", "mid", "late"], ["separate", "shared"]
    for objective in ("joint", "inpainting"):
        heat = traces(fig, "scores", objective=objective)[0]
        text = np.array(traces(fig, "cell_text", objective=objective)[0].text).reshape(3, 2)
        for i, f in enumerate(fusions):
            for j, d in enumerate(decoders):
                cell = [t for t in SWEEP if (t.fusion, t.decoder, t.objective) == (f, d, objective)]
                done = [t for t in cell if t.fate == FINISHED]
                if done:
                    top = max(done, key=lambda t: t.score("av"))
                    assert heat.z[i][j] == pytest.approx(top.score("av"))
                    assert f"AV {top.score('av'):.3f}" in text[i, j]
                    assert f"A {top.score('audio'):.3f} · V {top.score('video'):.3f}" in text[i, j]
                    count = f"{len(cell)} trials ({len(done)} finished)"
                    assert text[i, j].endswith(f"best config: n = 1 seed · {count}")
                    assert f"AV {top.score('av'):.3f} (n = 1: no interval)" in text[i, j]
                else:
                    assert math.isnan(heat.z[i][j])
                    assert text[i, j].startswith("no finished trial" if cell else "not run")
        # One seed per configuration (a study older than repeats): no cell is crowned on a single sample.
        assert not [s for s in fig.layout.shapes if s.xref == heat.xaxis]
        assert traces(fig, "cell_text", objective=objective)[0].meta["verdict"] == \
            "no significant difference at n = 1"
    empty = np.array(traces(fig, "cell_text", objective="inpainting")[0].text).reshape(3, 2)
    assert empty[1, 1].startswith("no finished trial (1 diverged, 1 pruned)")
    assert empty[2, 0] == "not run"


def test_masking_ratios_coloured_by_score(sweep: StudyData) -> None:
    fig = figures.masking_ratios(sweep)
    for objective in ("joint", "inpainting"):
        scored = traces(fig, "scored", objective=objective)[0]
        done = [by_id(row[0]) for row in scored.customdata]
        assert sorted(t.id for t in done) == sorted(t.id for t in SWEEP if t.objective == objective
                                                    and t.fate == FINISHED)
        assert list(scored.x) == pytest.approx([t.mask_audio for t in done])
        assert list(scored.y) == pytest.approx([t.mask_video for t in done])
        assert list(scored.marker.color) == pytest.approx([t.score("av") for t in done])
    assert list(traces(fig, DIVERGED, objective="inpainting")[0].customdata) == ["9", "13"]


def test_importances_cover_the_varying_parameters(sweep: StudyData) -> None:
    fig = figures.importances(sweep)
    bars = traces(fig, "importance")[0]
    assert set(bars.y) == {"lr", "mask_ratio_audio", "mask_ratio_video", "fusion", "decoder", "objective"}
    assert sum(bars.x) == pytest.approx(1.0)
    assert list(bars.x) == sorted(bars.x)  # most important drawn on top


def test_importances_find_the_parameter_that_drives_the_score() -> None:
    rng = np.random.default_rng(0)
    n = 30
    lr = 10 ** rng.uniform(-5, -2, n)
    trials = pd.DataFrame({
        "trial_id": [str(i) for i in range(n)], "status": FINISHED, "cell": "decoder=shared,fusion=mid",
        "fusion": "mid", "decoder": "shared", "objective": "joint", "lr": lr,
        "mask_ratio_audio": rng.uniform(0.5, 0.9, n), "mask_ratio_video": rng.uniform(0.5, 0.9, n),
        "seed": rng.integers(0, 3, n), "score": -np.abs(np.log10(lr) + 3.5),
    })
    params = ("fusion", "decoder", "objective", "lr", "mask_ratio_audio", "mask_ratio_video", "seed")
    data = StudyData("synthetic", "run", "FINISHED", params, trials, pd.DataFrame(), pd.DataFrame())
    found = param_importances(data, "score")
    assert set(found) == {"lr", "mask_ratio_audio", "mask_ratio_video"}  # not seed, not constant axes
    assert max(found, key=found.get) == "lr" and found["lr"] > 0.6


def test_overview_counts_compute_and_best_config_per_cell(sweep: StudyData) -> None:
    fig = figures.overview(sweep)
    counts = traces(fig, "status_counts")[0]
    expected = pd.Series([t.fate for t in SWEEP]).value_counts()
    assert dict(zip(counts.x, counts.y, strict=True)) == expected.to_dict()
    cells = sorted({t.cell for t in SWEEP})
    finished_hours = next(t for t in traces(fig, "compute") if t.meta["status"] == FINISHED)
    assert sum(finished_hours.y) == pytest.approx(
        sum(SECONDS_PER_STEP * t.stop for t in SWEEP if t.fate == FINISHED) / 3600)
    table = traces(fig, "best_config")[0]
    header = list(table.header.values)
    assert header[:3] == ["fusion · decoder · objective", "trials", "best trial"]
    assert "lr" in header and "seed" not in header  # searched params only
    columns = dict(zip(header, table.cells.values, strict=True))
    labels = columns["fusion · decoder · objective"]
    assert labels[:3] == ["early · separate · joint", "early · shared · joint", "mid · separate · joint"]
    assert len(labels) == len(cells)
    for cell in cells:
        done = [t for t in SWEEP if t.cell == cell and t.fate == FINISHED]
        t = next(t for t in SWEEP if t.cell == cell)
        best = columns["best trial"][labels.index(f"{t.fusion} · {t.decoder} · {t.objective}")]
        assert best == (max(done, key=lambda t: t.score("av")).id if done else "—")
    assert "compute hours" in fig.layout.title.text and "partial" not in fig.layout.title.text


# --- repeats: seeds, intervals, verdicts --------------------------------------------------------------

def planted_best(cell: str) -> list[Trial]:
    """The repeats of a cell's best configuration by planted mean AV score, in repeat order."""
    done = [t for t in REPEATED if t.cell == cell and t.fate == FINISHED]
    lr = max({t.lr for t in done}, key=lambda lr: np.mean([t.score("av") for t in done if t.lr == lr]))
    return sorted((t for t in done if t.lr == lr), key=lambda t: t.repeat)


def cell_of(fusion: str, objective: str) -> str:
    return T.cell_key({"fusion": fusion, "decoder": "shared", "objective": objective})


def test_repeats_are_read_back_as_configurations_of_three_seeds(repeated: StudyData) -> None:
    trials = repeated.trials
    assert sorted(trials["repeat"].unique()) == [0, 1, 2]
    assert "seed" in repeated.params and "repeat" not in repeated.params  # the tag's column, not a param
    configs = configurations(repeated)
    assert configs.nunique() == 4 * len(REPEAT_LRS)  # 4 cells x 3 learning rates
    assert all(sorted(group) == [0, 1, 2] for _, group in trials.groupby(configs)["repeat"])
    baselines = repeated.baselines
    assert len(baselines) == 2 * 3 * REPEATS
    row = baselines[(baselines["baseline"] == "raw_input") & (baselines["probe"] == "probe/audio_acc")]
    assert list(row.sort_values("repeat")["value"]) == pytest.approx(BASELINE_SCORES["raw_input"]["audio"])


def test_cells_report_mean_and_interval_over_the_seeds_of_their_best_configuration(repeated: StudyData
                                                                                     ) -> None:
    cells = cell_summary(repeated).set_index("cell")
    assert len(cells) == 4
    for cell, row in cells.iterrows():
        best = planted_best(cell)
        assert row["n_repeats"] == REPEATS and row["best_trial"] == ", ".join(t.id for t in best)
        assert row["lr"] == pytest.approx(best[0].lr)
        for modality in ("av", "audio", "video"):
            expected = stats.mean_ci([t.score(modality) for t in best])
            got = row[f"ci:{modality}"]
            assert (got.mean, got.lo, got.hi) == pytest.approx((expected.mean, expected.lo, expected.hi))
            assert got.n == REPEATS
        assert row["by_repeat"] == pytest.approx({t.repeat: t.score("av") for t in best})


def test_ablation_crowns_the_planted_winner_only_and_carries_the_baseline_rows(repeated: StudyData) -> None:
    fig = figures.ablation_table(repeated)
    joint = traces(fig, "cell_text", objective="joint")[0].meta["verdict"]
    winner = r"best: mid · shared · joint beats every other \(Holm-adjusted p ≤ [0-9.e-]+, n = 3\)"
    assert re.fullmatch(winner, joint), joint
    inpainting = traces(fig, "cell_text", objective="inpainting")[0].meta["verdict"]
    assert inpainting == "no significant difference at n = 3"
    # the verdicts agree with the paired test on the planted scores
    a, b = ({t.repeat: t.score("av") for t in planted_best(cell_of(f, "joint"))} for f in ("mid", "early"))
    assert stats.paired_difference(a, b).p < stats.ALPHA
    boxes = [s.name for s in fig.layout.shapes]
    assert boxes == ["best:mid,shared"]
    text = np.array(traces(fig, "cell_text", objective="joint")[0].text).reshape(-1)
    mid = stats.mean_ci([t.score("av") for t in planted_best(cell_of("mid", "joint"))])
    assert f"<b>AV {mid.text()}</b>" in text[1] and "n = 3 seeds" in text[1]
    table = traces(fig, "ablation_rows")[0]
    columns = dict(zip(table.header.values, table.cells.values, strict=True))
    labels = list(columns["fusion · decoder · objective"])
    cells = ["early · shared · joint", "mid · shared · joint", "early · shared · inpainting",
             "shared · shared · inpainting"]
    leader = cells[1]
    assert labels[:10] == [cells[0], f"★ {leader}", *cells[2:], "baseline: random-init encoder",
                           "baseline: raw input", *(f"{figures.GAIN_LABEL}: {c}" for c in cells)]
    # Then the leader's probability of improvement over each other cell (best mean AV first), paired by
    # seed; no IQM rows below 5 seeds.
    others = sorted((c for c in cells if c != leader), key=lambda c: -np.mean(
        [t.score("av") for t in planted_best(cell_of(*[c.split(" · ")[i] for i in (0, 2)]))]))
    assert labels[10:] == [f"P({leader} > {c})" for c in others]
    assert list(columns["n (seeds)"]) == ["3"] * 13
    av = columns["probe/av_acc mean [95% CI]"]
    for row, other in enumerate(others, start=10):
        a, b = ({t.repeat: t.score("av") for t in planted_best(cell_of(*[c.split(" · ")[i] for i in (0, 2)]))}
                for c in (leader, other))
        assert av[row] == robust.improvement_paired(a, b).probability.text(2)
    for i, scores in enumerate(BASELINE_SCORES.values(), start=4):
        for modality, values in scores.items():
            column = columns[f"{T.probe_metric(modality, 'acc')} mean [95% CI]"]
            assert column[i] == stats.mean_ci(values).text()
    assert columns["probe/av_acc mean [95% CI]"][1] == mid.text()
    # Each cell's gain over the random-init encoder is paired by seed: repeat k minus the init of seed k.
    mid_joint = planted_best(cell_of("mid", "joint"))
    for modality, init in BASELINE_SCORES["random_init"].items():
        column = columns[f"{T.probe_metric(modality, 'acc')} mean [95% CI]"]
        gain = stats.paired_difference({t.repeat: t.score(modality) for t in mid_joint},
                                       dict(enumerate(init))).diff
        assert gain.lo > 0 and column[7] == f"+{gain.text()} ↑"


def test_a_gain_over_random_init_is_signed_and_marked_only_where_its_interval_excludes_zero() -> None:
    assert gain_text(stats.Interval(0.05, 0.01, 0.09, 3, "t")) == "+0.050 [0.010, 0.090] ↑"
    assert gain_text(stats.Interval(0.02, -0.03, 0.07, 3, "t")) == "+0.020 [-0.030, 0.070]"
    assert gain_text(stats.Interval(-0.05, -0.09, -0.01, 3, "t")) == "-0.050 [-0.090, -0.010] ↓"
    assert gain_text(stats.Interval(0.05, math.nan, math.nan, 1, "none")) == "+0.050 (n = 1: no interval)"


def test_a_sweep_ends_with_each_cells_gain_and_the_raw_input(repeated: StudyData, sweep: StudyData) -> None:
    lines = gains_lines(repeated)
    assert lines[0].startswith("Gain over the random-init encoder, paired by seed")
    mid_joint = planted_best(cell_of("mid", "joint"))
    gain = {m: stats.paired_difference({t.repeat: t.score(m) for t in mid_joint}, dict(enumerate(init))).diff
            for m, init in BASELINE_SCORES["random_init"].items()}
    (row,) = [line for line in lines if line.strip().startswith(cell_of("mid", "joint"))]
    assert row.endswith(f"av {gain_text(gain['av'])}   audio {gain_text(gain['audio'])}   "
                        f"video {gain_text(gain['video'])}")
    assert len(lines) == 2 + 4 and lines[-1].startswith("Raw input: av 0.510 · audio 0.460 · video 0.210")
    assert gains_lines(sweep) == []  # no reference rows logged: nothing to say


def test_a_gain_the_seeds_do_not_settle_says_how_many_seeds_would(repeated: StudyData) -> None:
    """A random-init row planted within noise of one cell's AV scores: that gain is open, and its plan is the
    paired t-test's at the measured gain and spread; the settled gains get none."""
    row = cell_summary(repeated).iloc[0]
    pretrained = row["by_repeat:av"]
    noise = {k: 0.03 if k % 2 else -0.03 for k in pretrained}
    frame = repeated.baselines.copy()
    planted = (frame["baseline"] == "random_init") & (frame["probe"] == T.probe_metric("av", "acc"))
    frame.loc[planted, "value"] = [pretrained[int(k)] - 0.01 + noise[int(k)]
                                   for k in frame.loc[planted, REPEAT]]
    data = dataclasses.replace(repeated, baselines=frame)
    unsettled = unsettled_gains(data)
    (open_gain,) = [u for u in unsettled if u.cell == row["cell"]]
    assert open_gain.column == T.probe_metric("av", "acc") and open_gain.gain.n == REPEATS
    init = {k: pretrained[k] - 0.01 + noise[k] for k in pretrained}
    assert open_gain.needed == next_run_paired(pretrained, init) and REPEATS < open_gain.needed.n < 100
    assert all(u.column == T.probe_metric("av", "acc") for u in unsettled)  # audio and video stay settled
    lines = gains_lines(data)
    first = lines.index("Not settled (interval includes 0) — seeds per cell to find each gain as measured, "
                        "80% power:")
    assert len(lines) == first + 1 + len(unsettled) + 1 and row["cell"] in "".join(lines[first:])
    settled_by = [u.needed.n for u in unsettled if not u.needed.capped]  # a gain near 0 needs more
    beyond = len(unsettled) - len(settled_by)
    assert lines[-1] == (f"Seeds per configuration that settle them: {max(settled_by)}"
                         + (f" ({beyond} would need more than the plan's cap)." if beyond else "."))
    assert unsettled_gains(repeated) == []  # every planted gain is settled


def test_every_trial_is_charged_to_its_cell_in_the_units_its_resources_make(sweep: StudyData) -> None:
    on_gpus = dataclasses.replace(sweep, settings={**sweep.settings, "resources.workers": "2",
                                                   "resources.gpus_per_worker": "1",
                                                   "resources.cpus_per_worker": "8", "budget.gpu_hours": "1"})
    costs = {c.cell: c for c in cell_costs(on_gpus)}
    for cell, group in sweep.trials.groupby("cell"):  # finished, pruned, diverged and failed trials alike
        hours = group["compute_s"].sum() / 3600
        assert costs[cell].trials == len(group) and costs[cell].trial_hours == pytest.approx(hours)
        assert costs[cell].gpu_hours == pytest.approx(2 * hours)
        assert costs[cell].cpu_hours == pytest.approx(16 * hours)
        assert costs[cell].clips_per_s == 120.0  # every trial logs 120 clips/s
    spent = sum(c.gpu_hours for c in costs.values())
    assert budget_text(on_gpus, list(costs.values())).startswith(
        f"Spent {spent:.3g} of the budget's 1 gpu-hours ({100 * spent:.0f}%)")
    assert resources(sweep).unit == "CPU-hours" and resources(on_gpus).unit == "GPU-hours"


def test_the_budget_view_draws_each_cells_expected_best_and_states_the_compute_matched_verdict(
        repeated: StudyData) -> None:
    verdict = matched_verdict(repeated)
    assert verdict is not None and verdict.matched.hours == pytest.approx(
        min(c.sum() for c in scores_and_costs(repeated)[1].values()))
    fig = budget_view(repeated)
    curves = [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("role") == "expected_best"]
    scored = {c for c, s in scores_and_costs(repeated)[0].items() if np.isfinite(s).any()}
    assert {t.meta["cell"] for t in curves} == scored
    assert len(curves) == 2 * len(scored)  # against trials and against hours
    assert fig.layout.meta["verdict"] == verdict.text()
    lines = cost_lines(repeated)
    assert lines[0].startswith("Cost per cell") and lines[-1].startswith("Compute-matched (expected best")


def test_a_single_lr_study_says_it_asked_no_lr_question_instead_of_drawing_empty_axes(
        repeated: StudyData) -> None:
    one_lr = dataclasses.replace(repeated, trials=repeated.trials.assign(lr=0.01))
    fig = figures.lr_stability(one_lr)
    assert fig.layout.meta["empty"] == ("this study asked no learning-rate question: every trial ran at "
                                        "base lr 0.01")
    assert not fig.data and fig.layout.xaxis.visible is False


def test_lr_stability_states_the_planted_verdict_and_draws_one_marker_per_configuration(repeated: StudyData
                                                                                          ) -> None:
    fig = figures.lr_stability(repeated)
    verdict = fig.layout.meta["verdict"]
    interval = r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] at 1e-4, n = 6\)"
    assert re.fullmatch(
        r"joint reconstruction: stable over 1e-4 to 1\.6e-3 \(4 octaves, 0/18 diverged, 0 grad-norm spikes; "
        rf"best probe/av_acc {interval}; "
        r"modality inpainting: stable over 1e-4 to 4e-4 \(2 octaves, 6/18 diverged, 6 grad-norm spikes; "
        rf"best probe/av_acc {interval}", verdict), verdict
    planted = [t for t in REPEATED if t.objective == "joint" and t.lr == 1e-4]
    assert stats.mean_ci([t.score("av") for t in planted]).text() in verdict
    shown = next(a for a in fig.layout.annotations if a.name == "verdict").text
    assert shown.replace(";<br>", "; ") == verdict
    score = T.probe_metric("av", "acc")
    for col, objective in enumerate(["joint", "inpainting"], start=1):
        marks = next(t for t in traces(fig, FINISHED, metric=score) if subplot_of(fig, t) == (2, col))
        finished = {(t.cell, t.lr) for t in REPEATED if t.objective == objective and t.fate == FINISHED}
        assert len(marks.x) == len(finished)  # configurations, not trials
        assert all(c[1] == REPEATS for c in marks.customdata)
    cells = traces(fig, "cell_verdicts")[0]
    assert list(cells.cells.values[0]) == ["early · shared · joint", "mid · shared · joint",
                                           "early · shared · inpainting", "shared · shared · inpainting"]
    early = cells.cells.values[1][2]
    assert early.startswith("stable over 1e-4 to 4e-4 (2 octaves, 3/9 diverged, 3 grad-norm spikes; best ")


def test_masking_ratios_draw_one_marker_per_configuration_coloured_by_its_mean(repeated: StudyData) -> None:
    fig = figures.masking_ratios(repeated)
    marks = traces(fig, "scored", objective="joint")[0]
    assert len(marks.x) == 2 * len(REPEAT_LRS)  # 2 cells x 3 lrs, not 18 trials
    for ids, color in zip((row[0] for row in marks.customdata), marks.marker.color, strict=True):
        seeds = [next(t for t in REPEATED if t.id == i) for i in ids.split(", ")]
        assert len(seeds) == REPEATS and color == pytest.approx(np.mean([t.score("av") for t in seeds]))


def test_the_studys_lr_tolerance_sets_the_window_and_a_bad_one_is_named(repeated: StudyData) -> None:
    """The study file's `lr_tolerance` reaches the dashboard through the study run's params."""
    strict = dataclasses.replace(repeated, settings={**repeated.settings, "lr_tolerance": "0.005"})
    joint = lr_verdicts(strict)[0]
    assert joint.window[0] == pytest.approx(1e-4) and joint.window[1] < 1.6e-3  # 0.5%: narrower than 5%
    bad = dataclasses.replace(repeated, settings={"lr_tolerance": "five percent"})
    with pytest.raises(BadSetting, match=r"lr_tolerance = 'five percent' is not a fraction in \(0, 1\); set"):
        lr_verdicts(bad)


def test_parallel_coordinates_one_line_per_configuration_across_searched_params_metric_and_probes(
        repeated: StudyData, sweep: StudyData) -> None:
    fig = figures.parallel_coordinates(repeated)
    lines = traces(fig, "parallel")[0]
    dims = {d.label: d for d in lines.dimensions}
    assert list(dims) == ["fusion", "objective", "lr (log)", "val/loss (mean)", "probe/av_acc (mean)",
                          "probe/audio_acc (mean)", "probe/video_acc (mean)"]  # decoder is constant: left out
    finished = {(t.cell, t.lr) for t in REPEATED if t.fate == FINISHED}
    assert len(lines.meta["configs"]) == len(finished) == 10
    configs = configurations(repeated)
    for i, config in enumerate(lines.meta["configs"]):
        seeds = [by for by in REPEATED if by.id in set(repeated.trials.loc[configs == config, "trial_id"])]
        assert len(seeds) == REPEATS
        assert dims["probe/av_acc (mean)"].values[i] == pytest.approx(np.mean([t.score("av") for t in seeds]))
        assert dims["lr (log)"].values[i] == pytest.approx(math.log10(seeds[0].lr))
        assert lines.line.color[i] == pytest.approx(dims["probe/av_acc (mean)"].values[i])
    assert list(dims["fusion"].ticktext) == ["early", "mid", "shared"]
    # The study's own metric (here val/loss, from the study file) is an axis; searched mask ratios too.
    sweep_dims = [d.label for d in traces(figures.parallel_coordinates(sweep), "parallel")[0].dimensions]
    assert {"mask_ratio_audio", "mask_ratio_video", "val/loss (mean)"} <= set(sweep_dims)


def test_a_study_without_repeats_says_it_has_no_intervals(sweep: StudyData) -> None:
    table = traces(figures.ablation_table(sweep), "ablation_rows")[0]
    assert "0.732 (n = 1: no interval)" in list(table.cells.values[2])
    labels = list(table.cells.values[0])
    assert not [v for v in labels if v.startswith(("baseline", figures.GAIN_LABEL))]  # none logged: no rows


# --- edge cases ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("study", list(EDGE_STUDIES))
def test_thin_studies_render_every_figure_and_say_why_panels_are_empty(store: str, study: str,
                                                                       tmp_path: Path) -> None:
    data = collect_study(MlflowClient(tracking_uri=store), study)
    built = {name: build(data) for name, build in [
        ("overview", figures.overview), ("curves", figures.learning_curves), ("lr", figures.lr_stability),
        ("ablation", figures.ablation_table), ("masking", figures.masking_ratios),
        ("importance", figures.importances), ("parallel", figures.parallel_coordinates)]}
    assert all(isinstance(f, go.Figure) for f in built.values())
    assert data.partial == (study in STILL_OPEN)
    if study == "one-trial":
        assert "1 finished trial(s)" in built["importance"].layout.meta["empty"]
        assert len(traces(built["curves"], "curve", metric=T.TRAIN_LOSS)) == 1
    if study == "all-diverged":
        marks = traces(built["curves"], "diverged", metric=T.TRAIN_LOSS)
        assert {t.meta["trial_id"] for t in marks} == {"0", "1"}
        texts = [x for t in traces(built["ablation"], "cell_text") for x in t.text]
        assert "no finished trial (1 diverged)<br>1 trials (0 finished)" in texts
        assert built["importance"].layout.meta["empty"] == "no probe score logged yet"
        assert built["parallel"].layout.meta["empty"] == "no finished trial yet"
        assert len(traces(built["lr"], DIVERGED)) == 1  # loss row only: nothing to score
    if study == "still-running":
        assert "partial: study still running" in built["overview"].layout.title.text
        running = traces(built["curves"], "curve", trial_id="1", metric=T.TRAIN_LOSS)[0]
        assert running.line.dash == "dash" and len(running.x) == 8
    if study == "no-trials":
        assert built["overview"].layout.meta["empty"] == "no trials logged yet"
    page = build_study_dashboard(study, store, out=tmp_path / "d.html", log_to_mlflow=False)
    assert ("partial: study still running" in page.read_text()) == (study in STILL_OPEN)


def test_unknown_study_lists_the_available_ones(store: str) -> None:
    with pytest.raises(StudyNotFound, match="available studies: all-diverged, no-trials, one-trial"):
        build_study_dashboard("nope", store, log_to_mlflow=False)
    result = CliRunner().invoke(dashboard, ["nope", "--tracking-uri", store])
    assert result.exit_code == 1 and "no study 'nope'" in result.output and "sweep" in result.output
    assert "Traceback" not in result.output


# --- output ----------------------------------------------------------------------------------------------

def test_dashboard_is_one_offline_html_and_is_logged_to_the_study_run(store: str, tmp_path: Path) -> None:
    out = tmp_path / "s.html"
    result = CliRunner().invoke(dashboard, ["sweep", "--tracking-uri", store, "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.count("plotly.js v") == 1  # plotly.js embedded exactly once
    assert "<script src" not in page and "<link" not in page  # nothing to fetch
    for name in ("overview", "learning_curves", "lr_stability", "ablation", "budget", "masking", "importance",
                 "parallel"):
        assert f'id="fig-{name}"' in page
    client = MlflowClient(tracking_uri=store)
    parent = collect_study(client, "sweep").parent_run_id
    logged = {a.path for a in client.list_artifacts(parent, "dashboard")}
    assert {"dashboard/dashboard.html", "dashboard/trials.csv", "dashboard/figures"} <= logged
    local = Path(client.download_artifacts(parent, "dashboard", str(tmp_path)))
    ablation = go.Figure(json.loads((local / "figures" / "ablation.json").read_text()))
    assert traces(ablation, "cell_text", objective="joint")
    assert len(pd.read_csv(local / "trials.csv")) == len(SWEEP)


def test_dashboards_never_import_ray() -> None:
    """Dashboards are built from MLflow alone; from the platform they read only the tracking contract."""
    for module in (REPO / "dashboards").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                prefix = f"{node.module}." if isinstance(node, ast.ImportFrom) else ""
                for name in (prefix + a.name for a in node.names):
                    where = f"{module.name} imports {name}"
                    assert name.split(".")[0] != "ray", where
                    tracking = name.startswith("avmae.platform.tracking.layout")
                    assert tracking or not name.startswith("avmae.platform."), where


# --- browser ---------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium() -> Path:
    """Debian's Chromium (`.ci/run` installs it); skip, saying why, where it is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)")
    return CHROMIUM


@contextmanager
def offline_pages(tmp_path: Path) -> Iterator[tuple[Callable[[], Any], list[str], list[str]]]:
    """Headless Chromium that may load `file:` URLs only: yields (new page, URLs it tried to fetch, console
    and page errors), each page reporting its errors."""
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    attempted: list[str] = []
    errors: list[str] = []

    def offline(route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(executable), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})
        try:
            browser.route("**/*", offline)

            def new_page() -> Any:
                page = browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                return page

            yield new_page, attempted, errors
        finally:
            browser.close()


@pytest.mark.browser
def test_dashboard_renders_offline_in_headless_chromium(store: str, repeated: StudyData, tmp_path: Path
                                                        ) -> None:
    """Both pages draw every figure offline and without errors; the page of the study with repeats shows
    its intervals, the baseline rows and the stability sentence as rendered text."""
    names, text = {}, {}
    with offline_pages(tmp_path) as (new_page, attempted, errors):
        for study in ("sweep", "repeats"):
            out = tmp_path / f"{study}.html"
            page_path = build_study_dashboard(study, store, out=out, log_to_mlflow=False)
            page = new_page()
            page.goto(page_path.resolve().as_uri())
            names[study] = page.eval_on_selector_all(".figure", "els => els.map(e => e.dataset.figure)")
            page.wait_for_function(
                "names => names.every(n => document.querySelector(`#fig-${n} .main-svg`))",
                arg=names[study], timeout=60_000)
            text[study] = {n: page.eval_on_selector(f"#fig-{n}", "e => e.textContent") for n in names[study]}
            page.screenshot(path=str(tmp_path / f"{study}.png"), full_page=True)
    for study in ("sweep", "repeats"):
        assert names[study] == ["overview", "learning_curves", "lr_stability", "ablation", "budget",
                                "masking", "importance", "parallel", "load", "finetune"]
        assert (tmp_path / f"{study}.png").stat().st_size > 50_000
    assert attempted == [] and errors == []
    ablation, stability = text["repeats"]["ablation"], text["repeats"]["lr_stability"]
    mid = stats.mean_ci([t.score("av") for t in planted_best(cell_of("mid", "joint"))])
    assert f"AV {mid.text()}" in ablation and "★ mid · shared · joint" in ablation  # interval, crowned
    assert "no significant difference at n = 3" in ablation
    assert "baseline: random-init encoder" in ablation and "baseline: raw input" in ablation
    assert stats.mean_ci(BASELINE_SCORES["raw_input"]["av"]).text() in ablation
    for clause in figures.lr_stability(repeated).layout.meta["verdict"].split("; "):
        assert clause in stability
    assert "no significant difference at n = 1" in text["sweep"]["ablation"]
    print(f"screenshots: {tmp_path / 'sweep.png'} {tmp_path / 'repeats.png'}")


def test_importances_of_a_metric_without_variance_say_so_instead_of_crashing() -> None:
    n, score = 6, T.probe_metric("av", "acc")
    trials = pd.DataFrame({
        "trial_id": [str(i) for i in range(n)], "status": FINISHED, "cell": "decoder=shared,fusion=mid",
        "fusion": "mid", "decoder": "shared", "objective": "joint", "lr": np.geomspace(1e-5, 1e-2, n),
        "mask_ratio_audio": np.linspace(0.5, 0.9, n), score: 0.25,
    })
    trials.loc[n - 1, score] = np.nan  # a trial without a score does not count either way
    params = ("fusion", "decoder", "objective", "lr", "mask_ratio_audio")
    data = StudyData("flat", "run", "FINISHED", params, trials, pd.DataFrame(), pd.DataFrame())
    why = f"importance not defined: every finished trial has the same {score} (0.25)"
    with pytest.raises(NotEnoughTrials, match=f"^{re.escape(why)}$"):
        param_importances(data, score)
    assert figures.importances(data).layout.meta["empty"] == why  # the panel says so; the page still builds


def test_an_interrupted_study_says_so_and_how_to_continue(tmp_path: Path) -> None:
    """Ctrl-C ends a sweep with its study run KILLED and its running trials `interrupted` (the platform's own
    calls below); the dashboard must not call that "still running"."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    trials = [Trial("0", "mid", "shared", "joint", 1e-4), Trial("1", "mid", "shared", "joint", 1e-3,
                                                                fate=RUNNING, stop=8)]
    parent = write_study(client, "stopped", trials, tmp_path, running=True)
    T.interrupt_trial_runs(client, parent)
    T.end_study_run(client, parent, "KILLED")
    data = collect_study(client, "stopped")
    assert data.interrupted and data.partial
    assert sorted(data.trials["status"]) == ["finished", "interrupted"]
    assert "partial: study interrupted" in figures.overview(data).layout.title.text
    curves = figures.learning_curves(data)  # an interrupted trial has a line style of its own
    assert traces(curves, "curve", trial_id="1", metric=T.TRAIN_LOSS)[0].line.dash == "longdash"
    page = build_study_dashboard("stopped", store, out=tmp_path / "d.html", log_to_mlflow=False).read_text()
    assert "study interrupted" in page and "--resume" in page and "still running" not in page


def test_machine_load_shows_each_trials_throughput_against_its_cpu(repeated: StudyData) -> None:
    assert figures.machine_load(repeated).layout.meta["empty"].startswith("no system metrics")
    n = len(repeated.trials)
    loaded = dataclasses.replace(repeated, trials=repeated.trials.assign(**{
        T.SYSTEM_PROCESS_CPU: np.linspace(20, 100, n), T.TRAIN_CLIPS_PER_S: np.linspace(5, 50, n)}))
    points = [t for t in figures.machine_load(loaded).data if t.meta["role"] == "load"]
    assert sum(len(t.x) for t in points) == n and {t.meta["use"] for t in points} == {T.SYSTEM_PROCESS_CPU}
    by_trial = {tid: (x, y) for t in points for tid, x, y in zip(t.customdata, t.x, t.y, strict=True)}
    first = loaded.trials.iloc[0]
    assert by_trial[first["trial_id"]] == (first[T.SYSTEM_PROCESS_CPU], first[T.TRAIN_CLIPS_PER_S])


def test_watch_rebuilds_while_the_study_runs_and_stops_when_it_ends(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import avmae.dashboards.cli as cli

    uri = f"sqlite:///{tmp_path / 'watch.db'}"
    client = MlflowClient(uri)
    study = T.start_study_run(client, "watched", {"metric": T.VAL_LOSS})
    run = T.start_trial_run(client, study, "t0", {"objective": "joint"}, {"lr": 1e-3})
    T.log_metrics(client, run, {T.VAL_LOSS: 0.5}, step=1)
    sleeps = []

    def sleep(seconds: float) -> None:  # the study ends during the second wait
        sleeps.append(seconds)
        if len(sleeps) == 2:
            T.end_study_run(client, study)

    monkeypatch.setattr(cli.time, "sleep", sleep)
    out = tmp_path / "watched.html"
    args = ["watched", "--tracking-uri", uri, "--out", str(out), "--watch", "7", "--no-log-to-mlflow"]
    result = CliRunner().invoke(dashboard, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("dashboard for watched") == 3 and sleeps == [7, 7] and out.is_file()


def test_a_sweep_ends_with_the_leaders_probability_of_improvement(repeated: StudyData, sweep: StudyData
                                                                 ) -> None:
    lines = leads_lines(repeated)
    leader = cell_of("mid", "joint")
    assert lines[0] == f"P({leader} > another cell), paired by seed (95% Wilson interval):"
    assert len(lines) == 1 + 3
    a = {m: {t.repeat: t.score(m) for t in planted_best(leader)} for m in ("av", "audio", "video")}
    for line in lines[1:]:
        other = line.split()[1]
        b = {m: {t.repeat: t.score(m) for t in planted_best(other)} for m in a}
        chances = [f"{m} {robust.improvement_paired(a[m], b[m]).probability.text(2)}" for m in a]
        assert line.endswith("   ".join(chances) + "  (n = 3)"), line
    assert leads_lines(sweep) == []  # one seed per configuration: no interval, nothing to say


def test_cells_with_five_seeds_or_more_show_their_iqm_beside_the_mean(repeated: StudyData) -> None:
    cells = cell_summary(repeated)
    scores = score_columns(repeated.trials)
    rng = np.random.default_rng(0)
    for modality in scores:
        cells[f"by_repeat:{modality}"] = [dict(enumerate(rng.uniform(0.4, 0.6, 5))) for _ in cells.index]
    cells["n_repeats"] = [5, 4, 5, 3]
    labels = figures._labels(cells)
    rows = figures._iqm_rows(cells, labels, scores)
    assert [label for label, _, _ in rows] == [f"IQM: {labels[0]}", f"IQM: {labels[2]}"]
    for (_, n, texts), i in zip(rows, (0, 2), strict=True):
        assert n == 5 and texts == [robust.iqm_ci(list(cells.loc[i, f"by_repeat:{m}"].values())).text()
                                    for m in scores]
