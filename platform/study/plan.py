"""What a study will run, in words: cells, search space, schedule, resource plan (`avmae sweep --dry-run`)."""

from __future__ import annotations

import math
import os

from avmae.platform.study.spec import Grid, Range, StudySpec
from avmae.platform.tracking.layout import cell_key


def describe(spec: StudySpec, storage: str, tracking_uri: str, address: str | None,
             cluster_gpus: int | None = None, clips_per_s: float | None = None) -> str:
    """The whole plan, one section after another, as `avmae sweep --dry-run` prints it."""
    lines = [*_study_lines(spec), *_cell_lines(spec), *_search_lines(spec), *_training_lines(spec),
             _evaluation_line(spec), *_trial_lines(spec), *data_feed_lines(spec, clips_per_s)]
    if cluster_gpus:
        lines.append(cluster_plan(spec, cluster_gpus))
    lines += finetune_lines(spec, cluster_gpus)
    lines += [_ray_line(spec, address), f"Storage: {storage}", f"MLflow: {tracking_uri}"]
    return "\n".join(lines)


def _study_lines(spec: StudySpec) -> list[str]:
    """The study's name and description, its data, its model."""
    data = spec.data
    fixed = ", ".join(f"{k}={v}" for k, v in spec.model.overrides.items())
    model = f"Model: preset {spec.model.preset}" + (f", input {spec.model.input}" if spec.model.input else "")
    return [
        f"Study {spec.name}" + (f": {spec.description.strip()}" if spec.description.strip() else ""),
        f"Data: {data.kind} at {data.root} (train split {data.train_split!r}"
        + (f", validation {data.val_split!r}" if data.val_split else "")
        + (f", cache {data.cache_dir}" if data.cache_dir else ", decoded on the fly") + ")",
        model + (f"; fixed {fixed}" if fixed else ""),
    ]


def _cell_lines(spec: StudySpec) -> list[str]:
    """How many cells the axes make (and how many are excluded), then each cell's key."""
    cells = spec.cells()
    axes = " x ".join(f"{name}[{len(values)}]" for name, values in spec.axes.items()) or "no axes"
    excluded = math.prod(len(v) for v in spec.axes.values()) - len(cells)
    return [f"Cells: {len(cells)} ({axes}" + (f", {excluded} excluded" if excluded else "") + ")",
            *(f"  {i:>3}. {cell_key(cell) or '(the whole study)'}" for i, cell in enumerate(cells, 1))]


def _search_lines(spec: StudySpec) -> list[str]:
    """How each cell is searched (Optuna, a grid, or repeats of one configuration), then each dimension."""
    tr = spec.train
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
    lines = [f"Search inside each cell ({how}):"]
    for name, dim in spec.search.items():
        if isinstance(dim, Range):
            lines.append(f"  {name}: {dim.dist}({dim.low:g}, {dim.high:g})")
        else:
            lines.append(f"  {name}: {'grid' if isinstance(dim, Grid) else 'choice'} {dim.values}")
    return lines


def _training_lines(spec: StudySpec) -> list[str]:
    """The recipe every trial trains with, and the scheduler that stops poor trials."""
    tr, sch = spec.train, spec.scheduler
    steps = f"at most {tr.steps_per_epoch} steps" if tr.steps_per_epoch else "the whole split"
    base, wd, warmup = (
        "searched" if name in spec.search or name in spec.axes else f"{getattr(tr, name):g}"
        for name in ("lr", "weight_decay", "warmup_epochs")
    )
    scheduler = (f"Scheduler: ASHA on {spec.metric}, grace {sch.grace_period} epoch(s), "
                 f"reduction {sch.reduction_factor:g}" if sch.name == "asha"
                 else "Scheduler: none (every trial runs all epochs)")
    return [f"Training: {tr.epochs} epochs of {steps}, batch {tr.batch_size} per worker, "
            f"lr = base ({base}) x global batch / 256, AdamW(0.9, 0.95) wd {wd}, warmup {warmup} "
            f"epochs + cosine; metric {spec.metric} ({spec.mode})", scheduler]


def _evaluation_line(spec: StudySpec) -> str:
    ev = spec.evaluation
    probe = ", ".join(ev.probe)
    if not probe:
        return "Evaluation: none"
    when = f"every {ev.probe_every} epoch(s) and after the last" if ev.probe_every else "after the last epoch"
    refs = "; reference rows: a random-init encoder and the raw input" if ev.baselines else ""
    return (f"Evaluation: linear probe ({probe}) {when}, trained on {ev.train_split!r}, scored on "
            f"{ev.test_split!r}{refs}")


def _trial_lines(spec: StudySpec) -> list[str]:
    """How many trials, how many at once, the budget, and what one trial and the peak reserve."""
    res, cells = spec.resources, len(spec.cells())
    per_trial = _per_trial(spec)
    peak = {k: v * res.max_concurrent_trials for k, v in per_trial.items()}
    per_cell = f", at most {res.max_concurrent_per_cell} per cell" if res.max_concurrent_per_cell else ""
    lines = [f"Trials: {cells * spec.trials_in_cell} ({cells} cells x {spec.trials_in_cell}), at most "
             f"{res.max_concurrent_trials} at a time from every cell, dealt round-robin{per_cell}"]
    budget = [f"{v:g} {k.replace('_', ' ')}" for k, v in spec.budget.model_dump().items() if v]
    if budget:
        lines.append(f"Budget: {' and '.join(budget)}; then no new trial starts (--resume with more goes on)")
    lines.append(f"Per trial: {res.workers} worker(s) x {{CPU: {res.cpus_per_worker:g}, GPU: "
                 f"{res.gpus_per_worker:g}}} = {_resources(per_trial)}; at peak {_resources(peak)}")
    return lines


def data_feed_lines(spec: StudySpec, clips_per_s: float | None = None) -> list[str]:
    """The prepared cache's size in its format, and what each trial's readers need at `clips_per_s` per
    worker (default: a GPU study's ViT-B step on an H200; none for CPU studies): MB/s and decoding cores
    against the CPUs the trial reserves (`data.sizing`, measured costs)."""
    from avmae.platform.data import sizing
    from avmae.platform.study.prepare import geometries

    data, res = spec.data, spec.resources
    fmt = data.cache_format if data.cache_dir else "uint8"
    clips, seconds, source = sizing.dataset_clips(data, data.av_digits)
    source = f"{data.kind}'s {source}"
    rate = clips_per_s or (sizing.VIT_B_CLIPS_PER_S if res.gpus_per_worker else None)
    lines = [f"Data feed ({fmt} cache{'' if data.cache_dir else ', if cached'}; measured costs: "
             "docs/benchmarks.md, Training formats):"]
    for geometry in sorted(geometries(spec), key=lambda g: g.short_side):
        cost, measured = sizing.format_cost(fmt, geometry)
        size = sizing.Sizing(clips, seconds, cost, (rate or 0) * res.workers)
        lines += [f"  prepared (short side {geometry.short_side}): {clips:,} clips x {seconds:g} s x "
                  f"{cost.disk_mb_per_s:.3g} MB/s = {size.prepared_gb:,.1f} GB"
                  + ("" if measured else " (costs scaled from the nearest measured geometry)"),
                  f"    clips: {source}"]
        if rate:
            cpus = res.workers * res.cpus_per_worker
            verdict = "enough" if size.cores <= cpus else "too few: raise cpus_per_worker, or jpeg on the GPU"
            lines += [f"  each trial ({res.workers} worker(s) at {rate:,.0f} clips/s): reads "
                      f"{size.read_mb_per_s:,.0f} MB/s, decodes on {size.cores:.1f} of its {cpus:g} CPU "
                      f"cores ({verdict})",
                      f"  at peak ({res.max_concurrent_trials} trials): reads "
                      f"{size.read_mb_per_s * res.max_concurrent_trials / 1000:,.2f} GB/s"]
    return lines


def _ray_line(spec: StudySpec, address: str | None) -> str:
    """The cluster joined, or the local runtime and how many trials fit on this machine."""
    if address:
        return f"Ray: the cluster at {address}"
    res, per_trial, cpus = spec.resources, _per_trial(spec), os.cpu_count() or 1
    fits = math.floor(cpus / per_trial["CPU"]) if per_trial["CPU"] else res.max_concurrent_trials
    note = "" if fits >= res.max_concurrent_trials else f" - only {fits} trial(s) fit at a time here"
    gpu_note = " - needs GPUs: use --address" if per_trial["GPU"] else ""
    return f"Ray: a local runtime for the job ({cpus} CPUs here){note}{gpu_note}"


def _per_trial(spec: StudySpec) -> dict[str, float]:
    res = spec.resources
    return {"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}


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


def finetune_lines(spec: StudySpec, gpus: int | None = None) -> list[str]:
    """The fine-tuning stage (study/finetune_stage.py): its runs, their recipe and resources, and on `gpus`
    GPUs how many run at once and in about how many waves; nothing without a `finetune:` section."""
    ft = spec.finetune
    if ft is None:
        return []
    cells, lrs = len(spec.cells()), ft.grid()
    total = (cells + ft.scratch) * spec.repeats * len(ft.settings) * len(lrs)
    recipe = ft.resolve(ft.settings[0], lrs[0])
    rows = f"{cells} cells' best configuration" + (" + the from-scratch row" if ft.scratch else "")
    lines = [f"Fine-tuning: {total} runs = ({rows}) x {spec.repeats} seed(s) x {len(ft.settings)} setting(s) "
             f"({', '.join(ft.settings)}) x {len(lrs)} LR(s) ({', '.join(f'{lr:g}' for lr in lrs)})",
             f"  recipe {ft.recipe}: {recipe.epochs} epochs, global batch {recipe.batch_size}, SGD, "
             f"layer decay {recipe.layer_decay:g}, fusion layer {recipe.fusion_layer}; each cell "
             "judged at its best LR", f"  per run: the study's resources, {_resources(_per_trial(spec))}"]
    per_run = spec.resources.workers * spec.resources.gpus_per_worker
    if gpus and per_run:
        concurrent = min(math.floor(gpus / per_run), spec.resources.max_concurrent_trials, total)
        lines.append(f"  on {gpus} GPUs: {concurrent} concurrent runs of {per_run:g} GPUs, "
                     f"~{math.ceil(total / max(concurrent, 1))} waves")
    return lines


def _resources(amounts: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in amounts.items() if v) or "nothing"
