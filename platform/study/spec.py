"""A study, as one YAML file: validated completely before anything starts.

A study trains every *cell* (one combination of the ablation `axes`) and, inside each cell, tunes the
`search` space with `trials_per_cell` trials. Names in `axes` and `search` are either training
hyperparameters (`lr`, `weight_decay`, `warmup_epochs`) or fields of the model's `AVMAEConfig`; every
cell is checked with the model's own `resolve_config` at the corners of the search space, so a study that
would fail in its 30th trial fails here instead, naming the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from avmae.models import AVMAEConfig, resolve_config  # the config side of avmae.models: no torch
from avmae.platform.data.config import AVDigitsBuild, DataConfig
from avmae.platform.study.finetune_spec import FinetuneSpec
from avmae.platform.tracking.layout import PROBE_PREFIX, SEED_PARAM, TRAIN_LOSS, VAL_LOSS, cell_key
from avmae.platform.train.reports import metric_mode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Searchable training hyperparameters; every other name must be an `AVMAEConfig` field.
TRAIN_PARAMS = ("lr", "weight_decay", "warmup_epochs")
PROBE_MODALITIES = ("av", "audio", "video")
# The study metric: a loss, or a probe score (`acc`, or `map` for multi-label data such as AudioSet).
METRIC_PATTERN = r"^(train/loss|val/loss|probe/(av|audio|video)_(acc|map))$"
# A trial's repeat index in its Tune config: set by Tune's `Repeater` around Optuna, or a grid dimension.
REPEAT_KEY = "__trial_index__"
Scalar = bool | int | float | str


class SpecError(ValueError):
    """An invalid study file; the message has one line per problem, each naming its field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(Strict):
    """A continuous dimension, sampled by Optuna (TPE) inside each cell."""

    dist: Literal["uniform", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def corners(self) -> list[float]:
        return [self.low, self.high]


class Choice(Strict):
    """A categorical dimension, sampled by Optuna."""

    dist: Literal["choice"]
    values: list[Scalar] = Field(min_length=1)

    def corners(self) -> list[Scalar]:
        return list(self.values)


class Grid(Strict):
    """Every value is run (`tune.grid_search`); a cell with a grid is not searched by Optuna."""

    dist: Literal["grid"]
    values: list[Scalar] = Field(min_length=1)

    def corners(self) -> list[Scalar]:
        return list(self.values)


Dimension = Annotated[Range | Choice | Grid, Field(discriminator="dist")]


class DataSpec(DataConfig):
    """The data pipeline's `DataConfig`, plus the splits and loader settings a study uses."""

    train_split: str = "train"
    val_split: str | None = None  # gives `val/loss` each epoch (fixed masks, as the paper's eval)
    frame_stride: int = Field(4, ge=1)
    loader_workers: int = Field(0, ge=0)
    av_digits: AVDigitsBuild | None = None  # kind av-digits: build it first if needed

    @model_validator(mode="after")
    def _av_digits_only(self) -> DataSpec:
        if self.av_digits is not None and self.kind != "av-digits":
            raise ValueError(f"av_digits is only for kind av-digits, not {self.kind}")
        return self


class ModelSpec(Strict):
    preset: str = "base"
    input: str | None = None
    overrides: dict[str, Scalar] = {}  # fixed `AVMAEConfig` fields, the same in every cell


class OnDivergeSpec(Strict):
    """Opt-in recovery from a diverged step (a non-finite loss or gradient), the recipe MAE-style
    pretraining applies by hand: rewind to the last good state (the end of the last epoch, or the initial
    weights), then go on with the LR times `lr_factor` (again at each rewind) and, with `fp32`, without mixed
    precision. Each rewind is recorded in the trial's run (`train/rewinds`, `train/lr_scale` at the step it
    diverged)."""

    rewinds: int = Field(2, ge=1)  # per trial; the next divergence stops the trial as diverged
    lr_factor: float = Field(0.5, gt=0, lt=1)
    fp32: bool = True


class TrainSpec(Strict):
    epochs: int = Field(ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # cap an epoch (None: the whole split)
    batch_size: int = Field(ge=1)  # per worker; the LR scales with the global batch
    lr: float = Field(1.5e-4, gt=0)  # base LR: lr = base * global batch / 256
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    log_every_steps: int = Field(10, ge=1)
    seed: int = 0  # repeat k trains with seed + k: its init, data order and (per rank, per epoch) masks
    compile: bool = False
    on_diverge: OnDivergeSpec | None = None  # None: a diverged trial stops (ranked last by Optuna and ASHA)


class SchedulerSpec(Strict):
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1)


class OptunaSpec(Strict):
    startup_trials: int | None = Field(None, ge=1)  # random trials before TPE (Optuna's default: 10)


class ResourceSpec(Strict):
    workers: int = Field(1, ge=1)  # DDP workers per trial
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)  # fractional: several trials share a GPU
    max_concurrent_trials: int = Field(2, ge=1)  # for the whole study: every cell's trials together
    max_concurrent_per_cell: int | None = Field(None, ge=1)  # optional cap on one cell's running trials

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"a worker takes a fraction of one GPU or whole GPUs, not {value}")
        return value


class BudgetSpec(Strict):
    """A study-wide budget: once spent, no new trial starts, the running ones finish, and the study run says
    why; `--resume` with a larger budget continues. A trial's time is Tune's `time_total_s`."""

    gpu_hours: float | None = Field(None, gt=0)  # trial hours x workers x GPUs per worker
    trial_hours: float | None = Field(None, gt=0)  # trial hours, summed over trials


class EvalSpec(Strict):
    """Linear probe on frozen encoder features after the last epoch, and every `probe_every` epochs (empty
    `probe`: none). Its score can be the study metric, so that the search and ASHA follow it."""

    probe: list[Literal["av", "audio", "video"]] = list(PROBE_MODALITIES)
    probe_every: int | None = Field(None, ge=1)  # epochs between online probes (None: after the last only)
    train_split: str = "train"
    test_split: str = "test"
    max_clips: int | None = Field(None, ge=1)  # a fixed random subset of each split (None: all of it)
    max_iter: int = Field(200, ge=1)  # logistic regression iterations
    pooling: Literal["mean", "tokens"] = "mean"  # encoder tokens averaged, or kept in place (probe.py)
    log_models: Literal["best_per_cell", "all", "none"] = "best_per_cell"  # trained encoders into MLflow
    baselines: bool = True  # probe a random-init encoder and the raw input too (the study's reference rows)

    def probes_after(self, epoch: int, last: bool) -> bool:
        """Whether the probe runs after `epoch` (1-based)."""
        return bool(self.probe) and (last or (self.probe_every is not None and epoch % self.probe_every == 0))


# A study's name is its MLflow experiment and its storage folder: no quotes, slashes or leading dots.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


def check_name(name: str, where: str = "name") -> str:
    """`name` if it can name a study, else a SpecError saying what a name may hold."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise SpecError(f"{where} {name!r}: a study name is 1-100 letters, digits, '_', '.' or '-', starting "
                        "with a letter or digit (it names the MLflow experiment and the storage folder)")
    return name


class StudySpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    data: DataSpec
    model: ModelSpec
    axes: dict[str, list[Scalar]] = {}
    exclude: list[dict[str, Scalar]] = []  # cells left out: each entry matches the cells with those values
    search: dict[str, Dimension] = {}
    trials_per_cell: int = Field(1, ge=1)  # with a grid: repeats of the grid (Tune's num_samples)
    repeats: int = Field(1, ge=1)  # every configuration runs with seeds seed+0..seed+repeats-1, paired
    train: TrainSpec
    metric: str = Field(TRAIN_LOSS, pattern=METRIC_PATTERN)  # a loss (min) or a probe score (max)
    lr_tolerance: float = Field(0.05, gt=0, lt=1)  # the LR-stability window: within 5% of the best score
    scheduler: SchedulerSpec = SchedulerSpec()
    optuna: OptunaSpec = OptunaSpec()
    resources: ResourceSpec = ResourceSpec()
    budget: BudgetSpec = BudgetSpec()
    evaluation: EvalSpec = EvalSpec()
    finetune: FinetuneSpec | None = None  # fine-tuning after pretraining (study/finetune_stage.py)

    @field_validator("axes")
    @classmethod
    def _axes_not_empty(cls, axes: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for name, values in axes.items():
            if not values:
                raise ValueError(f"axis {name!r} has no values")
            if len(set(map(str, values))) != len(values):
                raise ValueError(f"axis {name!r} repeats a value: {values}")
        return axes

    @property
    def mode(self) -> Literal["min", "max"]:
        return metric_mode(self.metric)

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if self.metric == VAL_LOSS and self.data.val_split is None:
            raise ValueError("metric: val/loss needs data.val_split")
        if self.metric.startswith(PROBE_PREFIX):
            modality = self.metric.removeprefix(PROBE_PREFIX).split("_")[0]
            if modality not in self.evaluation.probe or self.evaluation.probe_every is None:
                raise ValueError(f"metric: {self.metric} needs {modality!r} in evaluation.probe and "
                                 "evaluation.probe_every (ASHA compares trials at every epoch it stops at)")
        clash = set(self.axes) & set(self.search)
        if clash:
            raise ValueError(f"{sorted(clash)} are both axes and searched; pick one")
        fixed = set(self.model.overrides) & (set(self.axes) | set(self.search))
        if fixed:
            raise ValueError(f"model.overrides fixes {sorted(fixed)}, which the study also varies")
        for i, entry in enumerate(self.exclude):
            unknown = {k: v for k, v in entry.items()
                       if k not in self.axes or str(v) not in map(str, self.axes[k])}
            if not entry or unknown:
                raise ValueError(f"exclude[{i}]: {unknown or entry} matches no axis value; axes: {self.axes}")
        if not self.cells():
            raise ValueError("exclude leaves no cell to run")
        check_model(self)
        check_distinct_cells(self)
        if self.finetune is not None:
            check_finetune(self)
        return self

    @property
    def searched_by_optuna(self) -> bool:
        return bool(self.search) and not any(isinstance(d, Grid) for d in self.search.values())

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.search.values() if isinstance(d, Grid))

    @property
    def trials_in_cell(self) -> int:
        return self.trials_per_cell * self.grid_size * self.repeats

    def resolve_model(self, params: dict[str, Any]) -> AVMAEConfig:
        """A trial's model: the preset and fixed overrides plus the model fields among `params` (a cell, or a
        cell and its sampled values; training hyperparameters there are left out)."""
        _, overrides = split_params(params)
        return resolve_config(self.model.preset, input=self.model.input, **self.model.overrides, **overrides)

    def resolve_trial(self, params: dict[str, Any]) -> TrialConfig:
        """A trial's Tune config (its cell, sampled values and repeat index) resolved once, for the workers,
        the MLflow records and the plan alike."""
        params = dict(params)
        repeat = int(params.pop(REPEAT_KEY, 0))
        hparams, _ = split_params(params)
        return TrialConfig(
            cell={axis: params[axis] for axis in self.axes},
            sampled={name: params[name] for name in self.search if name in params},
            model=self.resolve_model(params),
            lr=hparams.get("lr", self.train.lr),
            weight_decay=hparams.get("weight_decay", self.train.weight_decay),
            warmup_epochs=hparams.get("warmup_epochs", self.train.warmup_epochs),
            repeat=repeat,
            seed=self.train.seed + repeat,
        )

    def cells(self) -> list[dict[str, Scalar]]:
        """Every combination of the axes not excluded, in file order ([{}] when there are no axes)."""
        names = list(self.axes)
        combos = (dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.axes.values()))
        return [cell for cell in combos if not any(_matches(cell, entry) for entry in self.exclude)]


@dataclass(frozen=True)
class TrialConfig:
    """One trial, resolved: what its workers train and what MLflow records of it."""

    cell: dict[str, Scalar]
    sampled: dict[str, Scalar]  # the searched values
    model: AVMAEConfig
    lr: float  # base LR (x global batch / 256)
    weight_decay: float
    warmup_epochs: float
    repeat: int  # k: paired with repeat k of every other cell
    seed: int  # init, data order and masks

    def params(self, spec: StudySpec) -> dict[str, Any]:
        """Everything that defines the trial, flat: the resolved model config (cell and sampled values
        included), the effective training hyperparameters and seed, the fixed schedule."""
        train = spec.train.model_dump(exclude={"log_every_steps", "compile"})
        hparams = {"lr": self.lr, "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                   SEED_PARAM: self.seed}
        return {**self.model.to_dict(), **train, **hparams, "repeat": self.repeat,
                "workers": spec.resources.workers, "data": spec.data.kind}


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one rank's randomness (masks, augmentations) in one epoch: different for every rank, the
    same on every run, so a trial resumed at epoch e draws what an uninterrupted one draws there."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{rank}/{epoch}".encode()).digest()[:8], "big") >> 1


def _matches(cell: dict[str, Scalar], entry: dict[str, Scalar]) -> bool:
    return all(str(cell.get(k)) == str(v) for k, v in entry.items())


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training hyperparameters, model overrides) of a trial's cell + sampled values."""
    train = {k: v for k, v in params.items() if k in TRAIN_PARAMS}
    return train, {k: v for k, v in params.items() if k not in TRAIN_PARAMS}


def _corners(spec: StudySpec) -> Iterator[dict[str, Scalar]]:
    """Each cell at each corner of the search space (at most 256 per cell), for model validation."""
    dims = {name: dim.corners() for name, dim in spec.search.items()}
    for cell in spec.cells():
        combos = itertools.product(*dims.values())
        for combo in itertools.islice(combos, 256):
            yield {**cell, **dict(zip(dims, combo, strict=True))}


def check_model(spec: StudySpec) -> None:
    """Every name varied must be a known parameter, and every value a valid model (the model's own checks):
    each axis value and search bound alone, then each cell at the corners of the search space."""
    allowed = [f for f in AVMAEConfig.field_names() if f not in ("preset", "input")]
    varied = {"axes": spec.axes, "search": spec.search, "model.overrides": spec.model.overrides}
    for section, names in varied.items():
        for name in names:
            if name not in allowed and (section == "model.overrides" or name not in TRAIN_PARAMS):
                extra = f"{', '.join(TRAIN_PARAMS)} or " if section != "model.overrides" else ""
                raise ValueError(f"{section}.{name}: unknown parameter; allowed: {extra}{', '.join(allowed)}")

    def resolve(where: str, params: dict[str, Scalar]) -> None:
        train, _ = split_params(params)
        try:
            for name, value in train.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            spec.resolve_model(params)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None

    resolve("model", {})
    for name, values in spec.axes.items():
        for value in values:
            resolve(f"axes.{name}={value}", {name: value})
    for name, dim in spec.search.items():
        for value in dim.corners():
            resolve(f"search.{name}={value}", {name: value})
    for params in _corners(spec):
        resolve("cell with " + ", ".join(f"{k}={v}" for k, v in params.items()), params)


def check_finetune(spec: StudySpec) -> None:
    """The fine-tuning recipe must fit the study: its global batch split evenly over the DDP workers, its
    fusion layer inside the pretrained encoder's depth."""
    ft = spec.finetune
    recipe = ft.resolve(ft.settings[0], ft.grid()[0])
    if recipe.batch_size % spec.resources.workers:
        raise ValueError(f"finetune.batch_size: {recipe.batch_size} does not split over "
                         f"{spec.resources.workers} workers")
    depth = spec.resolve_model({}).depth
    if recipe.fusion_layer > depth:
        raise ValueError(f"finetune.overrides.fusion_layer: {recipe.fusion_layer} is past the encoder's "
                         f"{depth} layers (the paper fuses at 16 of ViT-L's 24)")


def check_distinct_cells(spec: StudySpec) -> None:
    """Refuse a study whose axes repeat a network: two cells with the same canonical model (fields that cannot
    change the network or its loss put in normal form) and the same training values would be shown as two
    results of one experiment."""
    seen: dict[str, dict[str, Scalar]] = {}
    clashes = []
    for cell in spec.cells():
        train, _ = split_params(cell)
        key = json.dumps([spec.resolve_model(cell).canonical().to_dict(), train], sort_keys=True, default=str)
        if key in seen:
            clashes.append(f"{cell_key(seen[key])} and {cell_key(cell)}")
        seen.setdefault(key, cell)
    if clashes:
        raise ValueError(f"cells {'; '.join(clashes)} train the same network: leave one of each out with "
                         "`exclude` (e.g. decoder: joint under objective: inpainting is decoder: shared)")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; studies are full of such LRs, so read them as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file; raises SpecError listing every problem by field."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except (OSError, yaml.YAMLError) as err:
        raise SpecError(f"{path}: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a study is a YAML mapping, got {type(raw).__name__}")
    return parse_spec(raw, str(path))


def parse_spec(raw: dict[str, Any], source: str = "study") -> StudySpec:
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source} is invalid:\n" + "\n".join(_describe(e) for e in err.errors())) from None


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"  {where}: {message}" if where else f"  {message}"
