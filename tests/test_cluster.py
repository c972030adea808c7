"""The cluster files: the launcher config passes Ray's schema; the manifests match docs/cluster.md."""

from __future__ import annotations

import json
import re
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


def test_mlflow_runs_on_postgresql_with_an_artifact_store_behind_a_login():
    compose = yaml.safe_load((CLUSTER / "mlflow-compose.yaml").read_text())
    env = compose["services"]["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "mlflow-server.sh" in " ".join(compose["services"]["mlflow"]["command"])
    assert {"postgres", "minio", "mlflow"} <= set(compose["services"])
    kinds = {doc["kind"]: doc for doc in load_all("mlflow-k8s.yaml")}
    assert {"Service", "StatefulSet", "Deployment", "ConfigMap"} <= set(kinds)
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    k8s_env = {e["name"]: e for e in container["env"]}
    assert k8s_env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg2://")
    assert "mlflow-server.sh" in " ".join(container["args"])
    # Both deploy the same start script (tests/test_mlflow_server.py runs it on PostgreSQL).
    script = (CLUSTER / "mlflow-server.sh").read_text()
    assert kinds["ConfigMap"]["data"]["mlflow-server.sh"] == script
    server = script[script.index("exec mlflow server"):]
    assert "--app-name basic-auth" in server and "--serve-artifacts" in server


SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|ROOT_USER")


def test_no_default_passwords_and_no_secret_on_a_command_line():
    """Compose refuses to start without each secret (`${VAR:?message}`); k8s reads them from Secrets; and a
    secret is only ever an environment variable, never an argument that `ps` shows."""
    text = (CLUSTER / "mlflow-compose.yaml").read_text()
    for name, form in re.findall(r"\$\{(\w+)(:?[?-]?)", text):
        if SECRET.search(name):
            assert form == ":?", f"${{{name}}} must be ${{{name}:?message}}"
    compose = yaml.safe_load(text)
    for service in compose["services"].values():
        for key in ("command", "entrypoint"):
            value = service.get(key, "")
            line = " ".join(value) if isinstance(value, list) else value
            assert "$" not in line.replace("$$", ""), f"a variable on a command line: {line}"
    for doc in load_all("mlflow-k8s.yaml"):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if SECRET.search(var["name"]):
                    assert "secretKeyRef" in var["valueFrom"], var
            assert "$" not in " ".join(container.get("command", []) + container.get("args", []))
    script = (CLUSTER / "mlflow-server.sh").read_text()
    assert not SECRET.search(script[script.index("exec mlflow server"):])


def test_every_ray_node_gets_the_cluster_token():
    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    (job,) = load_all("rayjob.yaml")
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in head["env"]} >= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_the_docs_explain_every_cluster_file():
    docs = (REPO / "docs" / "cluster.md").read_text()
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            assert f"`{path.relative_to(CLUSTER)}`" in docs, path.name
    assert "--address" in docs and "--storage" in docs and "--tracking-uri" in docs and "--resume" in docs
    for security in ("RAY_AUTH_MODE=token", "ray get-auth-token", "authOptions", "MLFLOW_TRACKING_USERNAME"):
        assert security in docs, security
