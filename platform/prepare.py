"""Gets a study's data ready on the driver, once, before any trial starts: absolute paths (Ray Train workers
run in their own folders), AV-Digits built if the study uses it, and the decoded caches written, so trials
only read them."""

from __future__ import annotations

from pathlib import Path

from avmae.platform.data import ClipGeometry
from avmae.platform.spec import AVDigitsBuild, StudySpec


def absolute(spec: StudySpec, speech: str | Path | None = None) -> StudySpec:
    """The spec with every data path absolute; an AV-Digits cache gets a folder per audio kind."""
    data = spec.data
    if speech is not None and data.kind != "av-digits":
        raise ValueError(f"--speech is for AV-Digits studies; this one reads {data.kind}")
    index = data.index
    if isinstance(index, dict):
        index = {split: Path(p).resolve() for split, p in index.items()}
    elif index is not None:
        index = Path(index).resolve()
    cache_dir = Path(data.cache_dir).resolve() if data.cache_dir else None
    if cache_dir is not None and data.kind == "av-digits":
        cache_dir = cache_dir / ("fsdd" if speech else "tones")  # the same clip ids, other audio
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


def prepare_data(spec: StudySpec, speech: str | Path | None = None) -> None:
    """Build AV-Digits if needed (idempotent) and decode every split the study reads into the cache."""
    data = spec.data
    if data.kind == "av-digits":
        from avmae.platform.data import build_av_digits  # torch: only when building, not for --dry-run

        settings = data.av_digits or AVDigitsBuild()
        build_av_digits(data.root, speech=speech, workers=data.workers, **settings.model_dump())
    if data.cache_dir is None:
        return  # trials decode the media themselves
    splits = {data.train_split, data.val_split}
    if spec.evaluation.probe:
        splits |= {spec.evaluation.train_split, spec.evaluation.test_split}
    for geometry in geometries(spec):
        for split in sorted(s for s in splits if s):
            data.dataset(split, geometry, train=False)
