"""Gets a study's data ready on the driver, once, before any trial starts: absolute paths (Ray Train workers
run in their own folders), AV-Digits built if the study uses it, and the decoded caches written, so trials
only read them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from avmae.platform.data import ClipGeometry
from avmae.platform.data.config import AVDigitsBuild
from avmae.platform.data.locations import is_uri, join
from avmae.platform.study.spec import StudySpec


def av_digits_build_name(settings: AVDigitsBuild, speech: str | Path | None) -> str:
    """A name for one AV-Digits build: `tones-<digest>` or `fsdd-<digest>` of its settings. It names a
    study's cache folder: a build is remade in place when its settings change (same clip ids and labels,
    other pixels or sound), and the cache's own header could not tell the old decoded clips from the new."""
    source = {**settings.model_dump(), "speech": str(Path(speech).resolve()) if speech else None}
    digest = hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:8]
    return f"{'fsdd' if speech else 'tones'}-{digest}"


def absolute(spec: StudySpec, speech: str | Path | None = None) -> StudySpec:
    """The spec with every data path absolute (a cache URI kept as it is); an AV-Digits cache gets a folder
    per build (audio kind and settings)."""
    data = spec.data
    if speech is not None and data.kind != "av-digits":
        raise ValueError(f"--speech is for AV-Digits studies; this one reads {data.kind}")
    index = data.index
    if isinstance(index, dict):
        index = {split: Path(p).resolve() for split, p in index.items()}
    elif index is not None:
        index = Path(index).resolve()
    cache_dir = data.cache_dir
    if cache_dir is not None and not is_uri(cache_dir):  # a URI is the same from every node
        cache_dir = Path(cache_dir).resolve()
    if cache_dir is not None and data.kind == "av-digits":
        cache_dir = join(cache_dir, av_digits_build_name(data.av_digits or AVDigitsBuild(), speech))
    update = {
        "root": Path(data.root).resolve(),
        "index": index,
        "labels": Path(data.labels).resolve() if data.labels else None,
        "cache_dir": cache_dir,
    }
    return spec.model_copy(update={"data": data.model_copy(update=update)})


def geometries(spec: StudySpec) -> set[ClipGeometry]:
    """The input geometry of every cell (the model's input shapes)."""
    stride = spec.data.frame_stride
    return {ClipGeometry.from_input_shapes(spec.resolve_model(cell).input_shapes, frame_stride=stride)
            for cell in spec.cells()}


def prepare_data(spec: StudySpec, speech: str | Path | None = None, address: str | None = None) -> None:
    """Build AV-Digits if needed (idempotent), check the index (`preflight_index`: IndexHygieneError when its
    rows disagree) and decode every split the study reads into the cache: with `address`, as Ray tasks on
    every node of that cluster, else with `data.workers` local processes."""
    # torch: only when preparing, not for --dry-run
    from avmae.platform.data import build_av_digits, build_from_config, preflight_index
    from avmae.platform.data.distribute import ray_connection

    data = spec.data
    if data.kind == "av-digits":
        settings = data.av_digits or AVDigitsBuild()
        build_av_digits(data.root, settings, speech=speech, workers=data.workers)
    preflight_index(data)
    if data.cache_dir is None:
        return  # trials decode the media themselves
    splits = {data.train_split, data.val_split}
    if spec.evaluation.probe:
        splits |= {spec.evaluation.train_split, spec.evaluation.test_split}
    with ray_connection(address) as cluster:
        for geometry in geometries(spec):
            for split in sorted(s for s in splits if s):
                build_from_config(data, split, geometry, train=False, cluster=cluster)
