"""A study whose cache is at an s3:// URI (a moto S3 server started here): the driver writes the h264 shards
to the bucket, the trial's Ray Train worker copies what it reads into the bounded local folder, and MLflow
has the finished trial."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from avmae.platform.study.prepare import absolute
from avmae.platform.study.record import Launch
from avmae.platform.study.runner import run_study
from avmae.platform.study.spec import load_spec
from avmae.platform.tracking import layout as T
from mlflow.tracking import MlflowClient


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3://avmae on the test's moto S3 server, with the options pyarrow needs to reach it."""
    from pyarrow import fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # Ray's workers inherit them from this process
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                    allow_bucket_creation=True).create_dir("avmae")
    return f"s3://avmae/cache?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_study_trains_from_a_cache_in_s3(tmp_path: Path, tiny_av_digits: Path, bucket: str):
    from pyarrow import fs

    spec = {
        "name": "s3cache",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": bucket,
                 "cache_format": "h264", "cache_copy_dir": str(tmp_path / "copies"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8},
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        "evaluation": {"probe": []},
    }
    (tmp_path / "s3cache.yaml").write_text(yaml.safe_dump(spec))
    study = absolute(load_spec(tmp_path / "s3cache.yaml"))
    assert str(study.data.cache_dir).startswith("s3://avmae/cache/tones-")  # a URI, kept as one
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_study(study, None, Launch("s3cache", str(tmp_path / "runs" / "s3cache"), tracking))

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("s3cache")
    trials = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert [(r.data.tags[T.STATUS_TAG], r.info.status) for r in trials] == [("finished", "FINISHED")]
    s3, root = fs.FileSystem.from_uri(str(study.data.cache_dir))
    written = {Path(i.path).name for i in s3.get_file_info(fs.FileSelector(root, recursive=True))}
    assert {"cache.json", "broken.csv", "shard_00000.bin", "shard_00000.json"} <= written
    copied = {p.name for p in (tmp_path / "copies").rglob("shard_*.bin")}
    assert copied and copied <= written  # the worker read its shards from the bucket
