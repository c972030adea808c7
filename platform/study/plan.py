"""What a study will run, in words: cells, search space, schedule, resource plan (`avmae sweep --dry-run`)."""

from __future__ import annotations

import math
import os

from avmae.platform.spec import Grid, Range, StudySpec
from avmae.platform.tracking import cell_key


def describe(spec: StudySpec, storage: str, tracking_uri: str, address: str | None,
             cluster_gpus: int | None = None) -> str:
    cells, res, tr = spec.cells(), spec.resources, spec.train
    lines = [f"Study {spec.name}" + (f": {spec.description.strip()}" if spec.description.strip() else "")]
    data = spec.data
    lines.append(f"Data: {data.kind} at {data.root} (train split {data.train_split!r}"
                 + (f", validation {data.val_split!r}" if data.val_split else "")
                 + (f", cache {data.cache_dir}" if data.cache_dir else ", decoded on the fly") + ")")
    fixed = ", ".join(f"{k}={v}" for k, v in spec.model.overrides.items())
    model = f"Model: preset {spec.model.preset}" + (f", input {spec.model.input}" if spec.model.input else "")
    lines.append(model + (f"; fixed {fixed}" if fixed else ""))

    axes = " x ".join(f"{name}[{len(values)}]" for name, values in spec.axes.items()) or "no axes"
    excluded = math.prod(len(v) for v in spec.axes.values()) - len(cells)
    lines.append(f"Cells: {len(cells)} ({axes}" + (f", {excluded} excluded" if excluded else "") + ")")
    lines += [f"  {i:>3}. {cell_key(cell) or '(the whole study)'}" for i, cell in enumerate(cells, 1)]

    if spec.searched_by_optuna:
        startup = min(spec.optuna.startup_trials or 10, spec.trials_per_cell)
        how = f"Optuna TPE, {spec.trials_per_cell} trials, the first {startup} random"
    elif spec.search:
        how = f"grid of {spec.grid_size} x {spec.trials_per_cell} repeat(s), other dimensions random"
    else:
        how = f"nothing searched: {spec.trials_per_cell} identical trial(s)"
    if spec.repeats > 1:
        how += (f"; each configuration run with seeds {tr.seed}..{tr.seed + spec.repeats - 1}, "
                "paired across cells")
    lines.append(f"Search inside each cell ({how}):")
    for name, dim in spec.search.items():
        if isinstance(dim, Range):
            lines.append(f"  {name}: {dim.dist}({dim.low:g}, {dim.high:g})")
        else:
            kind = "grid" if isinstance(dim, Grid) else "choice"
            lines.append(f"  {name}: {kind} {dim.values}")

    steps = f"at most {tr.steps_per_epoch} steps" if tr.steps_per_epoch else "the whole split"
    base, wd, warmup = (
        "searched" if name in spec.search or name in spec.axes else f"{getattr(tr, name):g}"
        for name in ("lr", "weight_decay", "warmup_epochs")
    )
    lines.append(f"Training: {tr.epochs} epochs of {steps}, batch {tr.batch_size} per worker, "
                 f"lr = base ({base}) x global batch / 256, AdamW(0.9, 0.95) wd {wd}, warmup {warmup} "
                 f"epochs + cosine; metric {spec.metric} ({spec.mode})")
    sch = spec.scheduler
    if sch.name == "asha":
        lines.append(f"Scheduler: ASHA on {spec.metric}, grace {sch.grace_period} epoch(s), "
                     f"reduction {sch.reduction_factor:g}")
    else:
        lines.append("Scheduler: none (every trial runs all epochs)")
    ev = spec.evaluation
    probe = ", ".join(ev.probe)
    when = f"every {ev.probe_every} epoch(s) and after the last" if ev.probe_every else "after the last epoch"
    refs = "; reference rows: a random-init encoder and the raw input" if ev.baselines else ""
    lines.append(f"Evaluation: linear probe ({probe}) {when}, trained on {ev.train_split!r}, scored on "
                 f"{ev.test_split!r}{refs}" if probe else "Evaluation: none")

    total = len(cells) * spec.trials_in_cell
    per_trial = {"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}
    peak = {k: v * res.max_concurrent_trials for k, v in per_trial.items()}
    per_cell = f", at most {res.max_concurrent_per_cell} per cell" if res.max_concurrent_per_cell else ""
    lines.append(f"Trials: {total} ({len(cells)} cells x {spec.trials_in_cell}), at most "
                 f"{res.max_concurrent_trials} at a time from every cell, dealt round-robin{per_cell}")
    budget = [f"{v:g} {k.replace('_', ' ')}" for k, v in spec.budget.model_dump().items() if v]
    if budget:
        lines.append(f"Budget: {' and '.join(budget)}; then no new trial starts (--resume with more goes on)")
    lines.append(f"Per trial: {res.workers} worker(s) x {{CPU: {res.cpus_per_worker:g}, GPU: "
                 f"{res.gpus_per_worker:g}}} = {_resources(per_trial)}; at peak {_resources(peak)}")
    if cluster_gpus:
        lines.append(cluster_plan(spec, cluster_gpus))
    if address:
        lines.append(f"Ray: the cluster at {address}")
    else:
        cpus = os.cpu_count() or 1
        fits = math.floor(cpus / per_trial["CPU"]) if per_trial["CPU"] else res.max_concurrent_trials
        note = "" if fits >= res.max_concurrent_trials else f" - only {fits} trial(s) fit at a time here"
        gpu_note = " - needs GPUs: use --address" if per_trial["GPU"] else ""
        lines.append(f"Ray: a local runtime for the job ({cpus} CPUs here){note}{gpu_note}")
    lines.append(f"Storage: {storage}")
    lines.append(f"MLflow: {tracking_uri}")
    return "\n".join(lines)


def cluster_plan(spec: StudySpec, gpus: int) -> str:
    """What `gpus` GPUs make of the study: how many trials run at once, and in about how many waves (every
    trial run to the end: ASHA's early stops make it fewer)."""
    res, cells = spec.resources, len(spec.cells())
    per_trial = res.workers * res.gpus_per_worker
    if not per_trial:
        return f"On {gpus} GPUs: the trials use no GPU"
    concurrent = min(math.floor(gpus / per_trial), res.max_concurrent_trials,
                     cells * (res.max_concurrent_per_cell or spec.trials_in_cell))
    total = cells * spec.trials_in_cell
    if concurrent < 1:
        return f"On {gpus} GPUs: no trial fits ({per_trial:g} GPUs a trial)"
    return (f"On {gpus} GPUs: {cells} cells x {spec.trials_in_cell} trials of {per_trial:g} GPUs: "
            f"{concurrent} concurrent trials, ~{math.ceil(total / concurrent)} waves"
            + ("" if concurrent * per_trial >= gpus or concurrent == total
               else f" (max_concurrent_trials leaves {gpus - concurrent * per_trial:g} GPUs idle)"))


def _resources(amounts: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in amounts.items() if v) or "nothing"
