"""Every cell in one Tune experiment (platform/study/cells.py), without a Ray runtime: trials dealt
round-robin from a search per cell, a per-cell cap, Optuna's history kept per cell, ASHA comparing a
trial with its own cell only, and the study's budget."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from avmae.platform.study.cells import BudgetStopper, CellScheduler, cell_of
from avmae.platform.study.runner import study_search
from avmae.platform.study.spec import REPEAT_KEY, parse_spec
from avmae.platform.tracking import layout as T
from conftest import TINY_STUDY
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

CELLS = ["fusion=early,objective=joint", "fusion=early,objective=inpainting", "fusion=mid,objective=joint",
         "fusion=mid,objective=inpainting"]


def deal(search, n: int, start: int = 0) -> list[dict]:
    return [search.suggest(f"t{i}") for i in range(start, start + n)]


def test_trials_are_dealt_round_robin_so_every_cell_is_covered_early():
    spec = parse_spec(TINY_STUDY)  # 4 cells x 3 trials
    search = study_search(spec)
    configs = deal(search, 12)
    assert [cell_of(spec, c) for c in configs] == CELLS * 3
    assert search.suggest("t12") == search.FINISHED  # every cell has had its trials


def test_a_per_cell_cap_holds_back_only_that_cell():
    spec = parse_spec({**TINY_STUDY, "resources": {"max_concurrent_per_cell": 1, "max_concurrent_trials": 8}})
    search = study_search(spec)
    assert [cell_of(spec, c) for c in deal(search, 4)] == CELLS
    assert search.suggest("t4") is None  # every cell has its one trial running
    search.on_trial_complete("t1", {T.TRAIN_LOSS: 0.5, "time_total_s": 1.0})
    assert cell_of(spec, search.suggest("t5")) == CELLS[1]  # only the cell whose trial ended


def test_each_cells_optuna_history_holds_only_its_own_trials():
    spec = parse_spec(TINY_STUDY)
    search = study_search(spec)
    for i, config in enumerate(deal(search, 8)):
        search.on_trial_complete(f"t{i}", {T.TRAIN_LOSS: config["lr"], "time_total_s": 1.0})
    for key, cell_search in search.searches.items():
        mine = {trial for trial, cell in search.trial_cell.items() if cell == key}
        # Optuna's own record of what this cell's TPE learns from (OptunaSearch keeps it per Tune trial id)
        assert set(cell_search._ot_trials) == mine and len(cell_search._ot_study.trials) == 2
        assert all(t.state.name == "COMPLETE" for t in cell_search._ot_study.trials)


def test_a_cells_asha_never_stops_a_trial_for_another_cells_results():
    spec = parse_spec({**TINY_STUDY, "metric": "train/loss", "trials_per_cell": 4,
                       "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}})
    scheduler = CellScheduler(spec)
    shared = ASHAScheduler(time_attr=T.EPOCH, metric="train/loss", mode="min", max_t=2, grace_period=1,
                           reduction_factor=2)  # what one scheduler for the whole study would do
    good = [SimpleNamespace(trial_id=f"g{i}", config={"fusion": "early", "objective": "joint"},
                            evaluated_params={}) for i in range(3)]
    bad = SimpleNamespace(trial_id="b", config={"fusion": "mid", "objective": "joint"}, evaluated_params={})
    decisions = {}
    for name, sched in (("per cell", scheduler), ("shared", shared)):
        for trial in [*good, bad]:
            sched.on_trial_add(None, trial)
        for i, trial in enumerate(good):
            sched.on_trial_result(None, trial, {T.EPOCH: 1, "train/loss": 0.1 * (i + 1)})
        decisions[name] = sched.on_trial_result(None, bad, {T.EPOCH: 1, "train/loss": 5.0})
    assert decisions == {"per cell": TrialScheduler.CONTINUE, "shared": TrialScheduler.STOP}
    assert set(scheduler.cells) == {"fusion=early,objective=joint", "fusion=mid,objective=joint"}


def test_a_spent_budget_starts_no_trial_and_a_larger_one_goes_on(tmp_path: Path):
    spec = parse_spec({**TINY_STUDY, "budget": {"trial_hours": 1.0}})
    record = tmp_path / "study.json"
    record.write_text(json.dumps({"spec": spec.model_dump(mode="json")}))
    search = study_search(spec, str(record))
    stopper = BudgetStopper(str(record))
    deal(search, 2)
    search.on_trial_result("t0", {"time_total_s": 3000.0})
    search.on_trial_result("t1", {"time_total_s": 700.0})  # 3,700 s: past the hour
    assert search.suggest("t2") is None and search.stopped == "budget spent: 1.03 of 1 trial hours"
    assert not stopper.stop_all()  # two trials still running: they finish
    search.on_trial_complete("t0", {"time_total_s": 3000.0})
    search.on_trial_complete("t1", {"time_total_s": 700.0})
    assert stopper.stop_all()

    saved = tmp_path / "search.pkl"
    search.save(str(saved))
    raised = spec.model_copy(update={"budget": spec.budget.model_copy(update={"trial_hours": 2.0})})
    record.write_text(json.dumps({"spec": raised.model_dump(mode="json")}))  # what --resume writes
    resumed = study_search(spec, str(record))
    resumed.restore(str(saved))
    assert cell_of(spec, resumed.suggest("t2")) == CELLS[2]  # goes on where it stopped, round-robin
    assert not stopper.stop_all()  # the stopper Tune restores apart finds the live searcher


def test_with_a_probe_as_the_metric_asha_stops_the_trial_that_probes_worse():
    spec = parse_spec({**TINY_STUDY, "metric": "probe/av_acc", "trials_per_cell": 2,
                       "evaluation": {"probe_every": 1},
                       "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}})
    scheduler = CellScheduler(spec)
    cell = {"fusion": "early", "objective": "joint"}
    good, bad = (SimpleNamespace(trial_id=t, config=cell, evaluated_params={}) for t in ("good", "bad"))
    for trial in (good, bad):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, good, {T.EPOCH: 1, "probe/av_acc": 0.9}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bad, {T.EPOCH: 1, "probe/av_acc": 0.2}) == TrialScheduler.STOP


def test_a_failed_trial_that_resume_restarts_still_teaches_its_cells_optuna(caplog):
    """Optuna closed the trial's record when it failed; after `--resume` its final score arrives as one more
    evaluated point of its own cell, with the trial's sampled values (Optuna would refuse it otherwise)."""
    spec = parse_spec(TINY_STUDY)
    search = study_search(spec)
    configs = deal(search, 4)
    search.on_trial_complete("t0", None, error=True)  # a worker died
    search.on_trial_result("t0", {T.TRAIN_LOSS: 0.7, T.EPOCH: 2, "time_total_s": 2.0})  # resumed
    assert search.running()[CELLS[0]] == 1
    search.on_trial_complete("t0", {T.TRAIN_LOSS: 0.25, T.EPOCH: 3, "time_total_s": 3.0})
    cell = search.searches[CELLS[0]]
    first, late = cell._ot_study.trials
    assert first.state.name == "FAIL" and late.state.name == "COMPLETE" and late.value == 0.25
    assert late.params == {name: configs[0][name] for name in spec.search}
    assert "already finished" not in caplog.text
    others = [t.state.name for key in CELLS[1:] for t in search.searches[key]._ot_study.trials]
    assert others == ["RUNNING"] * 3  # the other cells' trials, each in its own study, untold


def resume_with_repeats(search, spec, record: Path, tmp_path: Path, repeats: int):
    """What `--resume` with more seeds does to the search Tune restores: the new record, then `restore`."""
    saved = tmp_path / "search.pkl"
    search.save(str(saved))
    grown = spec.model_copy(update={"repeats": repeats})
    record.write_text(json.dumps({"spec": grown.model_dump(mode="json")}))
    resumed = study_search(spec, str(record))
    resumed.restore(str(saved))
    return resumed


def deal_all(search, start: int) -> list[dict]:
    configs, i = [], start
    while (config := search.suggest(f"t{i}")) != search.FINISHED:
        assert config is not None
        configs.append(config)
        search.on_trial_complete(f"t{i}", {T.TRAIN_LOSS: 0.5, "time_total_s": 1.0})
        i += 1
    return configs


def seeds_by_configuration(spec, configs: list[dict], searched: tuple[str, ...]) -> dict[tuple, list[int]]:
    runs: dict[tuple, list[int]] = {}
    for c in configs:
        runs.setdefault((cell_of(spec, c), *(c[n] for n in searched)), []).append(c[REPEAT_KEY])
    return runs


def test_more_repeats_on_resume_run_only_the_missing_seeds_of_a_grid(tmp_path: Path):
    spec = parse_spec({**TINY_STUDY, "search": {"lr": {"dist": "grid", "values": [1e-2, 1e-3]}},
                       "trials_per_cell": 1, "repeats": 2})  # 4 cells x 2 lrs x 2 seeds
    record = tmp_path / "study.json"
    record.write_text(json.dumps({"spec": spec.model_dump(mode="json")}))
    search = study_search(spec, str(record))
    first = deal(search, 10)  # every cell's first lr with both seeds, two cells' second lr begun
    for i in range(10):
        search.on_trial_complete(f"t{i}", {T.TRAIN_LOSS: 0.5, "time_total_s": 1.0})
    added = deal_all(resume_with_repeats(search, spec, record, tmp_path, 3), start=10)
    runs = seeds_by_configuration(spec, first + added, ("lr",))
    assert len(runs) == 8 and all(sorted(seeds) == [0, 1, 2] for seeds in runs.values())  # each seed once
    assert len(added) == 24 - 10


def test_more_repeats_on_resume_give_optunas_configurations_their_missing_seeds(tmp_path: Path):
    spec = parse_spec({**TINY_STUDY, "repeats": 2})  # Optuna: 4 cells x 3 configurations x 2 seeds
    record = tmp_path / "study.json"
    record.write_text(json.dumps({"spec": spec.model_dump(mode="json")}))
    search = study_search(spec, str(record))
    first = deal(search, 8)  # each cell's first configuration with both seeds
    for i in range(8):
        search.on_trial_complete(f"t{i}", {T.TRAIN_LOSS: first[i]["lr"], "time_total_s": 1.0})
    resumed = resume_with_repeats(search, spec, record, tmp_path, 3)
    added = deal_all(resumed, start=8)
    runs = seeds_by_configuration(spec, first + added, ("lr", "mask_ratio_video"))
    assert len(runs) == 12 and all(sorted(seeds) == [0, 1, 2] for seeds in runs.values())
    assert {cell_of(spec, c) for c in added[:4]} == set(CELLS) and all(c[REPEAT_KEY] == 2 for c in added[:4])
    for cell_search in resumed.searches.values():  # Optuna learnt each configuration once, from its mean
        assert len(cell_search.searcher._ot_study.trials) == 3
