"""The reproducibility record of a study run (provenance), on a real SQLite store: a VGGSound-format index
written here, decoded-cache headers where the cache puts them, and a real git checkout made here."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from avmae.platform.data.loader import cache_path
from avmae.platform.study.prepare import geometries
from avmae.platform.study.spec import StudySpec, parse_spec
from avmae.platform.tracking import provenance as P
from mlflow.tracking import MlflowClient

ROWS = ["a,0,dog,train", "b,0,cat,train", "c,0,dog,train", "d,0,cat,train", "e,0,dog,val", "f,0,cat,test"]


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)  # the SQLite store's artifacts go to ./mlruns
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def spec(tmp_path: Path) -> StudySpec:
    """A study on a VGGSound-format index (train, val, test) with a decoded cache for every split it reads."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "vggsound.csv").write_text("\n".join(ROWS) + "\n")
    study = parse_spec({"name": "prov", "data": {"kind": "vggsound", "root": str(root), "val_split": "val",
                                                 "cache_dir": str(tmp_path / "cache")},
                        "model": {"preset": "tiny"}, "train": {"epochs": 1, "batch_size": 2}})
    for geometry in geometries(study):
        for split in ("train", "val", "test"):
            folder = cache_path(study.data.cache_dir, split, geometry)
            folder.mkdir(parents=True)
            (folder / "cache.json").write_text(json.dumps({"version": 2, "split": split}))
    return study


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "code"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "model.py").write_text("DEPTH = 4\n")
    git(repo, "add", "model.py")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def study_run(client: MlflowClient) -> str:
    return client.create_run(client.create_experiment("prov")).info.run_id


def artifacts(client: MlflowClient, run_id: str) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, P.FOLDER))


def test_the_record_is_on_the_study_run(client, spec, checkout, tmp_path):
    import torch

    run_id = study_run(client)
    now = P.record(client, run_id, spec, checkout)

    params = client.get_run(run_id).data.params
    assert params["provenance.python"] == platform.python_version()
    assert params["provenance.torch"] == torch.__version__
    assert params["provenance.cuda"] == str(torch.version.cuda)
    assert params["provenance.git_commit"] == git(checkout, "rev-parse", "HEAD")
    assert params["provenance.git_dirty"] == "False"
    assert params["provenance.data_fingerprint"] == now["data"]["fingerprint"]
    assert json.loads(params["provenance.data_clips"]) == {"test": 1, "train": 4, "val": 1}
    assert artifacts(client, run_id) == [P.RECORD, f"{P.FOLDER}/requirements.txt"]  # clean: no diff
    pins = Path(client.download_artifacts(run_id, f"{P.FOLDER}/requirements.txt", str(tmp_path))).read_text()
    assert f"torch=={version('torch')}" in pins.splitlines()
    logged = json.loads(Path(client.download_artifacts(run_id, P.RECORD, str(tmp_path))).read_text())
    assert logged == now
    index = str(spec.data.root / "vggsound.csv")
    assert logged["data"]["indexes"] == {index: P._file_sha256(spec.data.root / "vggsound.csv")}
    assert len(logged["data"]["caches"]) == 3 and all(logged["data"]["caches"].values())
    assert logged["packages"]["mlflow"] and logged["runtime"]["gpus"] == [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert P.changes_since(client, run_id, spec, checkout=checkout) == []


def test_resume_warns_when_the_index_or_a_cache_header_changed(client, spec, checkout, tmp_path):
    run_id = study_run(client)
    first = P.record(client, run_id, spec, checkout)
    index = spec.data.root / "vggsound.csv"
    index.write_text("\n".join([*ROWS, "g,0,dog,train"]) + "\n")
    header = next(Path(h) for h in first["data"]["caches"] if "/train_" in h)
    header.write_text("{}")

    lines = P.changes_since(client, run_id, spec, checkout=checkout)
    resumed = P.record(client, run_id, spec, checkout)  # the resumed study's record, beside the first

    old, new = first["data"]["indexes"][str(index)], P._file_sha256(index)
    sha = f"(sha256 {old[:8]}.. -> {new[:8]}..)"
    assert f"the index file {index} changed since the study started {sha}" in lines
    assert "split 'train' has 5 clips, had 4 clips when the study started" in lines
    assert any(line.startswith(f"the cache header {header} changed since the study started") for line in
               lines)
    assert len(lines) == 3, lines
    assert resumed["data"]["fingerprint"] != first["data"]["fingerprint"]
    names = artifacts(client, run_id)
    assert P.RECORD in names and any(n.startswith(f"{P.FOLDER}/resumed-") for n in names)
    assert P.changes_since(client, run_id, spec, resumed, checkout) == lines  # compared with the first
    index.unlink()
    assert f"the index file {index} is gone since the study started" in P.changes_since(
        client, run_id, spec, checkout=checkout)


def test_uncommitted_changes_are_flagged_kept_as_a_diff_and_a_new_commit_is_noticed(client, spec, checkout,
                                                                                   tmp_path):
    (checkout / "model.py").write_text("DEPTH = 12\n")
    (checkout / "new_fusion.py").write_text("X = 1\n")
    run_id = study_run(client)

    P.record(client, run_id, spec, checkout)

    assert client.get_run(run_id).data.params["provenance.git_dirty"] == "True"
    patch = Path(client.download_artifacts(run_id, f"{P.FOLDER}/git_diff.patch", str(tmp_path))).read_text()
    assert "-DEPTH = 4" in patch and "+DEPTH = 12" in patch and "# untracked: new_fusion.py" in patch
    (checkout / "model.py").write_text("DEPTH = 24\n")
    assert P.changes_since(client, run_id, spec, checkout=checkout) == [
        "the uncommitted changes to the code differ from those the study started with (see "
        f"{P.FOLDER}/git_diff.patch in the study run)"]
    before = git(checkout, "rev-parse", "HEAD")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "second")
    after = git(checkout, "rev-parse", "HEAD")
    assert P.changes_since(client, run_id, spec, checkout=checkout) == [
        f"the code is at git commit {after}, was {before} since the study started"]


def test_software_changes_are_named_one_line_each(spec, checkout):
    old = P.collect(spec, checkout)
    new = json.loads(json.dumps(old))
    new["runtime"]["torch"], new["runtime"]["gpus"] = "9.9.9", ["NVIDIA H200"]
    new["packages"]["numpy"] = "0.0.1"
    new["packages"]["leftpad"] = "1.0"
    del new["packages"]["mlflow"]

    assert P.compare(old, new) == [
        f"torch is 9.9.9, was {old['runtime']['torch']} when the study started",
        f"gpus is NVIDIA H200, was {', '.join(old['runtime']['gpus']) or 'none'} when the study started",
        "package leftpad 1.0 was installed since the study started",
        f"package mlflow {old['packages']['mlflow']} was uninstalled since the study started",
        f"package numpy is 0.0.1, was {old['packages']['numpy']} when the study started",
    ]


def test_outside_a_checkout_and_without_a_record(client, spec, tmp_path):
    bare = tmp_path / "site-packages"
    bare.mkdir()
    state = P.git_state(bare)
    assert state["commit"] is None and state["dirty"] is None
    assert state["avmae"] == "0.1.0"  # the installed package's version says which code ran
    assert P.changes_since(client, study_run(client), spec) == []  # a study recorded before provenance


def test_a_cache_in_a_bucket_is_fingerprinted_by_its_headers_there(spec: StudySpec, s3_endpoint: str,
                                                                    monkeypatch: pytest.MonkeyPatch):
    from avmae.platform.data.loader import cache_location
    from pyarrow import fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                         allow_bucket_creation=True)
    s3.create_dir("caches")
    bucket = f"s3://test:hush@caches/prov?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    in_bucket = spec.model_copy(update={"data": spec.data.model_copy(
        update={"cache_dir": bucket, "cache_format": "h264"})})
    geometry = next(iter(geometries(in_bucket)))
    header = cache_location(bucket, "train", geometry, "h264").split("?")[0].removeprefix("s3://test:hush@")
    with s3.open_output_stream(f"{header}/cache.json") as f:
        f.write(b'{"version": 2}')
    caches = P.dataset(in_bucket)["caches"]
    train = next(key for key in caches if "/train_" in key)
    assert train.startswith("s3://***@caches/prov/train_") and "hush" not in train  # credentials redacted
    assert caches[train] == hashlib.sha256(b'{"version": 2}').hexdigest()
    assert sum(v is None for v in caches.values()) == len(caches) - 1  # the splits not there: missing
