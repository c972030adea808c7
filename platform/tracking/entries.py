"""The entries of a study's MLflow journal (`queue`): one frozen dataclass per kind of write, turned into JSON
only at the journal's boundary (`encode`, `decode`).

An entry names its study run and, for a trial's write, the trial (not its MLflow run: the run is found or
created when the entry is sent). Its JSON is `{"op": <Op>, <field>: <value>, ...}`; the four trial entries
(`trial_run`, `epochs`, `tags`, `end`) keep the form that earlier avmae versions wrote, so a journal left by
one is read as it is. Every entry carries the times it records, so sending it again changes nothing.
"""

from __future__ import annotations

import dataclasses
import time
from enum import Enum
from typing import Any, ClassVar, get_args

from avmae.platform.tracking import layout as T


class Op(str, Enum):
    TRIAL_RUN = "trial_run"
    EPOCHS = "epochs"
    TAGS = "tags"
    END = "end"
    DATASET = "dataset"
    STUDY_PARAMS = "study_params"
    STUDY_METRICS = "study_metrics"
    STUDY_TAGS = "study_tags"
    INTERRUPT_TRIALS = "interrupt_trials"
    END_STUDY = "end_study"


class UnreadableEntry(ValueError):
    """A journal entry this avmae cannot read (not JSON of a known op with its fields)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True)
class TrialRun:
    """Find or create the trial's run under the study run (and reopen it: a resumed trial runs again)."""

    op: ClassVar[Op] = Op.TRIAL_RUN
    study_run: str
    trial: str
    cell: dict[str, Any]
    params: dict[str, Any]
    repeat: int = 0
    role: str = "trial"  # or layout.FINETUNE_ROLE
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # more tags of a new run
    # When the trial started: a run created later (MLflow was down) starts then, not when it is sent. In an
    # older avmae's entry, when it is read.
    time_ms: int = dataclasses.field(default_factory=now_ms)


@dataclasses.dataclass(frozen=True)
class Epochs:
    """Log the epoch records (`EpochReport.record`) the trial's run does not hold yet."""

    op: ClassVar[Op] = Op.EPOCHS
    study_run: str
    trial: str
    records: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Tags:
    """Set tags on the trial's run."""

    op: ClassVar[Op] = Op.TAGS
    study_run: str
    trial: str
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class End:
    """Set `tags`, then close the trial's run with `status`, as of `time_ms`."""

    op: ClassVar[Op] = Op.END
    study_run: str
    trial: str
    status: T.TrialStatus
    tags: dict[str, str]
    time_ms: int = dataclasses.field(default_factory=now_ms)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", T.TrialStatus(self.status))  # JSON holds its value


@dataclasses.dataclass(frozen=True)
class TrialDataset:
    """Log a split the trial reads as an MLflow dataset input of its run (`layout.log_dataset`)."""

    op: ClassVar[Op] = Op.DATASET
    study_run: str
    trial: str
    name: str
    digest: str
    source: str  # the data's root, a path or URI
    split: str
    profile: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StudyParams:
    op: ClassVar[Op] = Op.STUDY_PARAMS
    study_run: str
    params: dict[str, str]


@dataclasses.dataclass(frozen=True)
class StudyMetrics:
    """Metrics of the study run at one step, as of `time_ms`."""

    op: ClassVar[Op] = Op.STUDY_METRICS
    study_run: str
    metrics: dict[str, float]
    step: int
    time_ms: int = dataclasses.field(default_factory=now_ms)


@dataclasses.dataclass(frozen=True)
class StudyTags:
    op: ClassVar[Op] = Op.STUDY_TAGS
    study_run: str
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class InterruptTrials:
    """End the study's trial runs still running as interrupted, as of `time_ms`."""

    op: ClassVar[Op] = Op.INTERRUPT_TRIALS
    study_run: str
    time_ms: int = dataclasses.field(default_factory=now_ms)


@dataclasses.dataclass(frozen=True)
class EndStudy:
    """Close the study run with `status` (FINISHED, FAILED, KILLED), as of `time_ms`."""

    op: ClassVar[Op] = Op.END_STUDY
    study_run: str
    status: str
    time_ms: int = dataclasses.field(default_factory=now_ms)


Entry = (TrialRun | Epochs | Tags | End | TrialDataset
         | StudyParams | StudyMetrics | StudyTags | InterruptTrials | EndStudy)
TYPES: dict[Op, type[Entry]] = {cls.op: cls for cls in get_args(Entry)}


def encode(entry: Entry) -> dict[str, Any]:
    """The entry as JSON-able data."""
    fields = dataclasses.asdict(entry)
    return {"op": entry.op.value, **{k: v.value if isinstance(v, Enum) else v for k, v in fields.items()}}


def decode(data: Any) -> Entry:
    """The entry `encode` gave (or an earlier avmae wrote); fields it does not know are ignored. Raises
    `UnreadableEntry`."""
    try:
        cls = TYPES[Op(data["op"])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
    except (KeyError, TypeError, ValueError) as err:
        raise UnreadableEntry(f"not an MLflow journal entry this avmae knows ({err!r})") from err


def subject(entry: Entry) -> str:
    """What the entry writes to, for messages: `trial <id>` or `the study run`."""
    trial = getattr(entry, "trial", None)
    return f"trial {trial}" if trial is not None else "the study run"
