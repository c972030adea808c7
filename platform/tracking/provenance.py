"""The reproducibility record of a study run: what software ran it and which data it read, so a result can be
traced to both, and `--resume` can say what changed since the study started.

The record holds the installed package versions; Python, torch, CUDA and cuDNN versions and the GPU model (of
the driver's machine: trials on other nodes tag their host); the git commit of the avmae code, a `dirty` flag
and the uncommitted diff; and a dataset fingerprint: the sha256 of every index file the study reads, the clip
count of every split it uses and the sha256 of every decoded-cache header (`cache.json`, in a folder or a
bucket). It goes to the study run as params (`provenance.*`, a summary) and artifacts
(`provenance/provenance.json`, `provenance/requirements.txt`, `provenance/git_diff.patch`). The first
record of a run is the study's; a resumed study's record is kept beside it
(`provenance/resumed-<UTC time>.json`), never over it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from avmae.platform.data.locations import is_uri
from avmae.platform.study.spec import StudySpec
from avmae.platform.tracking.uris import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

FOLDER = "provenance"
RECORD = f"{FOLDER}/provenance.json"
PARAM_PREFIX = "provenance."
DIGEST_CHARS = 16  # of a split's dataset digest (MLflow keeps 36)
CHECKOUT = Path(__file__).resolve().parents[2]  # the avmae code that runs (a checkout, or site-packages)


def record(client: MlflowClient, run_id: str, spec: StudySpec, checkout: Path = CHECKOUT,
           log_params: Callable[[dict[str, str]], None] | None = None) -> dict[str, Any]:
    """Collect the record and log it to the study run `run_id` (after the data is prepared: the fingerprint
    reads the indexes and cache headers). Returns it. The artifacts go to MLflow at once (it must answer);
    `log_params` logs the summary params of a first record (default: at once, by `client`)."""
    now = collect(spec, checkout)
    diff = now["git"].pop("diff", "")  # an artifact of its own, not a field of the JSON
    first = not [a for a in client.list_artifacts(run_id, FOLDER) if a.path == RECORD]
    name = RECORD if first else f"{FOLDER}/resumed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    with tempfile.TemporaryDirectory(prefix="avmae-provenance-") as tmp:
        folder = Path(tmp)
        (folder / Path(name).name).write_text(json.dumps(now, indent=2, sort_keys=True))
        if first:
            pins = [f"{package}=={v}" for package, v in sorted(now["packages"].items())]
            (folder / "requirements.txt").write_text("\n".join(pins) + "\n")
        if diff:
            (folder / ("git_diff.patch" if first else f"{Path(name).stem}.patch")).write_text(diff)
        client.log_artifacts(run_id, tmp, FOLDER)
    if first and log_params is not None:
        log_params(summary(now))
    elif first:
        from avmae.platform.tracking import layout

        layout.log_params(client, run_id, summary(now))
    return now


def changes_since(client: MlflowClient, run_id: str, spec: StudySpec, current: dict[str, Any] | None = None,
                  checkout: Path = CHECKOUT) -> list[str]:
    """What differs now (or in `current`, a record just collected) from the study's first record, one line
    each, for `--resume` to warn with; [] when nothing changed or the run has no record to compare with."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="avmae-provenance-") as tmp:
        try:
            path = client.download_artifacts(run_id, RECORD, tmp)
        except (MlflowException, OSError):
            return []
        old = json.loads(Path(path).read_text())
    return compare(old, current if current is not None else collect(spec, checkout))


def collect(spec: StudySpec, checkout: Path = CHECKOUT) -> dict[str, Any]:
    """The record, as a JSON-able dict (`git.diff` holds the diff's text)."""
    return {"packages": packages(), "runtime": runtime(), "git": git_state(checkout), "data": dataset(spec)}


def summary(now: dict[str, Any]) -> dict[str, str]:
    """The params of a record: one line each, for the MLflow UI and searches."""
    run, git, data = now["runtime"], now["git"], now["data"]
    return {f"{PARAM_PREFIX}{k}": str(v) for k, v in {
        "python": run["python"], "torch": run["torch"], "cuda": run["cuda"], "gpu": ", ".join(run["gpus"]),
        "git_commit": git["commit"], "git_dirty": git["dirty"], "avmae": git["avmae"],
        "data_fingerprint": data["fingerprint"], "data_clips": json.dumps(data["clips"], sort_keys=True),
    }.items()}


def packages() -> dict[str, str]:
    """Every installed distribution's version, by its normalised name."""
    return {dist.metadata["Name"].lower().replace("_", "-"): dist.version for dist in distributions()
            if dist.metadata["Name"]}


def runtime() -> dict[str, Any]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "implementation": sys.implementation.name,
            "os": platform.platform(), "machine": platform.machine(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "gpus": gpus}


def git_state(checkout: Path) -> dict[str, Any]:
    """The commit of `checkout`, whether it has uncommitted changes (untracked files count: they may be code),
    and the diff (tracked changes, then the untracked files' names). Outside a git checkout (an installed
    wheel) only the package version says which code ran."""
    try:
        avmae = version("avmae")
    except PackageNotFoundError:
        avmae = None
    commit = _git(checkout, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None, "avmae": avmae}
    status = _git(checkout, "status", "--porcelain") or ""
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    diff = _git(checkout, "diff", "HEAD", "--binary", strip=False) or ""
    if untracked:
        diff += "".join(f"# untracked: {name}\n" for name in untracked)
    return {"commit": commit, "dirty": bool(status.strip()), "diff_sha256": _sha256(diff.encode()),
            "avmae": avmae, "diff": diff}


def dataset(spec: StudySpec) -> dict[str, Any]:
    """The dataset fingerprint: index files' sha256, clips per split, cache headers' sha256, and one sha256
    over the three."""
    from avmae.platform.data import load_index
    from avmae.platform.data.loader import cache_location
    from avmae.platform.data.locations import join
    from avmae.platform.study.prepare import geometries

    data = spec.data
    indexes = {str(p): _file_sha256(p) for p in index_files(spec)}
    clips: dict[str, int | None] = {}
    for split in splits(spec):
        index = data.index[split] if isinstance(data.index, dict) else data.index
        try:
            table = load_index(data.kind, data.root, index, split, data.pattern, data.labels, data.target)
            clips[split] = len(table.clips)
        except (OSError, ValueError):  # a missing or broken index: its sha256 says "missing" or what changed
            clips[split] = None
    caches = {}
    if data.cache_dir is not None:
        for geometry in sorted(geometries(spec), key=repr):
            for split in splits(spec):
                folder = cache_location(data.cache_dir, split, geometry, data.cache_format)
                header = join(folder, "cache.json")
                caches[redact(str(header))] = _file_sha256(header)
    parts = {"indexes": indexes, "clips": clips, "caches": caches}
    return {**parts, "fingerprint": _sha256(json.dumps(parts, sort_keys=True).encode())}


def split_datasets(spec: StudySpec, data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each split the study reads as the MLflow dataset its trials log, in `layout.log_dataset`'s keyword
    arguments: named after the data's kind, its source the data's root, its digest derived from the dataset
    fingerprint (of `data`, a `dataset` record, else measured now) and the split, so that each split is a
    dataset of its own, and its profile the split's clip count and the whole fingerprint."""
    data = dataset(spec) if data is None else data
    fingerprint = data["fingerprint"]
    return [{"name": spec.data.kind, "digest": _sha256(f"{fingerprint}/{split}".encode())[:DIGEST_CHARS],
             "source": str(spec.data.root), "split": split,
             "profile": {"clips": data["clips"].get(split), "fingerprint": fingerprint}}
            for split in splits(spec)]


def splits(spec: StudySpec) -> list[str]:
    """The splits a study reads (as `prepare.prepare_data` caches them)."""
    names = {spec.data.train_split, spec.data.val_split}
    if spec.evaluation.probe:
        names |= {spec.evaluation.train_split, spec.evaluation.test_split}
    return sorted(s for s in names if s)


def index_files(spec: StudySpec) -> list[Path]:
    """The index files a study reads: its `index` (one file, or one per split), else the VGGSound layout's
    ROOT/vggsound.csv (`loader.load_index`'s default), and AudioSet's `labels`."""
    data = spec.data
    if isinstance(data.index, dict):
        files = [Path(p) for p in data.index.values()]
    elif data.index is not None:
        files = [Path(data.index)]
    else:
        files = [Path(data.root) / "vggsound.csv"] if data.kind in ("vggsound", "av-digits") else []
    return [*files, Path(data.labels)] if data.labels else files


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per difference between two records, oldest first in each pair."""
    since = "since the study started"
    lines = []
    for key in ("python", "torch", "cuda", "cudnn", "gpus", "os"):
        before, now = old["runtime"].get(key), new["runtime"].get(key)
        if before != now:
            lines.append(f"{key} is {_text(now)}, was {_text(before)} when the study started")
    before, now = old["packages"], new["packages"]
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            if name not in now:
                lines.append(f"package {name} {before[name]} was uninstalled {since}")
            elif name not in before:
                lines.append(f"package {name} {now[name]} was installed {since}")
            else:
                lines.append(f"package {name} is {now[name]}, was {before[name]} when the study started")
    git_old, git_new = old["git"], new["git"]
    if git_old["commit"] != git_new["commit"]:
        lines.append(f"the code is at git commit {git_new['commit']}, was {git_old['commit']} {since}")
    elif git_old["diff_sha256"] != git_new["diff_sha256"]:
        lines.append("the uncommitted changes to the code differ from those the study started with (see "
                     f"{FOLDER}/git_diff.patch in the study run)")
    if git_old.get("avmae") != git_new.get("avmae"):
        lines.append(f"avmae is {git_new.get('avmae')}, was {git_old.get('avmae')} {since}")
    lines += _compare_files("the index file", old["data"]["indexes"], new["data"]["indexes"])
    for split in sorted(set(old["data"]["clips"]) | set(new["data"]["clips"])):
        before, now = old["data"]["clips"].get(split), new["data"]["clips"].get(split)
        if before != now:
            lines.append(f"split {split!r} has {_clips(now)}, had {_clips(before)} when the study started")
    lines += _compare_files("the cache header", old["data"]["caches"], new["data"]["caches"])
    return lines


def _compare_files(what: str, old: dict[str, str | None], new: dict[str, str | None]) -> list[str]:
    lines = []
    for path in sorted(set(old) | set(new)):
        before, now = old.get(path), new.get(path)
        if path not in old:
            lines.append(f"the study now reads {what} {path}, which it did not when it started")
        elif path not in new:
            lines.append(f"the study no longer reads {what} {path}")
        elif now is None and before is not None:
            lines.append(f"{what} {path} is gone since the study started")
        elif before != now:
            lines.append(f"{what} {path} changed since the study started (sha256 {_short(before)} -> "
                         f"{_short(now)})")
    return lines


def _git(checkout: Path, *args: str, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=checkout, capture_output=True,
                             text=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if strip else out.stdout


def _file_sha256(path: str | Path) -> str | None:
    """The file's sha256, None when it does not exist; `path` may be a URI pyarrow.fs opens (a cache's
    header in a bucket)."""
    digest = hashlib.sha256()
    try:
        with _open(path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _open(path: str | Path) -> BinaryIO:
    if not is_uri(path):
        return Path(path).open("rb")
    import pyarrow.fs

    fs, where = pyarrow.fs.FileSystem.from_uri(str(path))
    return fs.open_input_stream(where)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(digest: str | None) -> str:
    return "missing" if digest is None else f"{digest[:8]}.."


def _clips(count: int | None) -> str:
    return "an unreadable index" if count is None else f"{count} clips"


def _text(value: Any) -> str:
    if isinstance(value, list):  # GPU names
        return ", ".join(map(str, value)) or "none"
    return str(value)
