"""The cluster files: the launcher config passes Ray's schema; the manifests match docs/cluster.md."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from conftest import REPO

CLUSTER = REPO / "platform" / "cluster"


def load_all(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def test_the_cluster_launcher_config_is_valid_for_ray():
    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("pip install" in c and "avmae" in c for c in config["setup_commands"])
    assert "2.60.0" in config["docker"]["image"]


def test_the_rayjob_runs_a_sweep_on_gpu_workers_against_the_mlflow_service():
    (job,) = load_all("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("avmae sweep experiments/") and "--storage s3://" in entrypoint
    assert "--tracking-uri http://mlflow.avmae.svc.cluster.local:5000" in entrypoint
    assert (REPO / entrypoint.split()[2]).is_file()
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    (gpu,) = cluster["workerGroupSpecs"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"


def test_mlflow_runs_on_postgresql_with_an_artifact_store():
    compose = yaml.safe_load((CLUSTER / "mlflow-compose.yaml").read_text())
    command = compose["services"]["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in command and "--artifacts-destination s3://" in command
    assert {"postgres", "minio", "mlflow"} <= set(compose["services"])
    kinds = {doc["kind"]: doc for doc in load_all("mlflow-k8s.yaml")}
    assert {"Service", "StatefulSet", "Deployment"} <= set(kinds)
    args = " ".join(kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "postgresql://" in args and "--serve-artifacts" in args


def test_the_docs_explain_every_cluster_file():
    docs = (REPO / "docs" / "cluster.md").read_text()
    for path in CLUSTER.iterdir():
        assert f"`{path.name}`" in docs, path.name
    assert "--address" in docs and "--storage" in docs and "--tracking-uri" in docs and "--resume" in docs
