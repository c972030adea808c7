"""The cluster files: the launcher config passes Ray's schema; the manifests match docs/cluster.md."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
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


# --- Slurm: the sbatch script, run with Slurm's variables faked and srun/scontrol/ray/avmae as stubs -------

SBATCH = CLUSTER / "slurm" / "avmae.sbatch"
STUBS = {
    # srun: log, drop srun's own options, answer `hostname --ip-address` for the head, run anything else here.
    "srun": """echo "srun $*" >> "$STUB_LOG"
while [[ $# -gt 0 && $1 == -* ]]; do if [[ $1 == -w ]]; then shift 2; else shift; fi; done
if [[ $1 == hostname ]]; then echo "fe80::1 10.1.2.3"; exit 0; fi
exec "$@"
""",
    "scontrol": """echo "scontrol $*" >> "$STUB_LOG"; printf '%s\\n' $STUB_HOSTS
""",
    # ray: `start --block` blocks like the real one; `status` lists one line per started node, as Ray's does.
    "ray": """echo "ray $* [$RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH]" >> "$STUB_LOG"
case $1 in
  status) for node in $(cat "$STUB_LOG.nodes" 2>/dev/null); do echo " 1 node_$node"; done ;;
  start) echo "$$" >> "$STUB_LOG.nodes"; exec sleep 60 ;;
esac
""",
    "avmae": """trap 'kill $!; echo "avmae got TERM" >> "$STUB_LOG"; exit 130' TERM
echo "avmae $*" >> "$STUB_LOG"
sleep "$STUB_SWEEP_S" & wait $!
exit 3
""",
}


def test_the_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def fake_slurm(tmp_path: Path, hosts: list[str], sweep_s: float = 0) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t0k3n")
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_HOSTS": " ".join(hosts), "STUB_SWEEP_S": str(sweep_s),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": str(len(hosts)),
        "SLURM_CPUS_PER_TASK": "4", "SLURM_GPUS_PER_TASK": "1",
    }


@pytest.mark.parametrize("hosts", [["node1"], ["node1", "node2"]])
def test_the_sbatch_script_starts_ray_on_every_node_then_the_sweep_on_the_head(tmp_path, hosts):
    env = fake_slurm(tmp_path, hosts)
    start = time.monotonic()
    result = subprocess.run(["bash", str(SBATCH), "experiments/quickstart.yaml", "--storage", "/shared/runs"],
                            env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert result.returncode == 3, result.stderr  # the sweep's exit code
    assert time.monotonic() - start < 30  # the blocking `ray start`s were stopped at the end, not waited for
    port = 20000 + 4242 % 40 * 1000
    token = f"[token {tmp_path}/.ray/auth_token]"
    (head,) = [c for c in calls if c.startswith("ray start --head")]
    assert f"--port={port} " in head and "--node-ip-address=10.1.2.3 " in head  # the IPv4 of two addresses
    assert "--num-cpus=4 --num-gpus=1" in head and head.endswith(token)
    assert "srun --nodes=1 --ntasks=1 -w node1 ray start --head" in "\n".join(calls)
    workers = [c for c in calls if c.startswith("ray start --address")]
    assert len(workers) == len(hosts) - 1
    for host, worker in zip(hosts[1:], workers, strict=True):
        assert worker.startswith(f"ray start --address=10.1.2.3:{port} ") and worker.endswith(token)
        assert f"srun --nodes=1 --ntasks=1 -w {host} ray start --address=10.1.2.3:{port}" in "\n".join(calls)
    sweeps = [c for c in calls if c.startswith("avmae")]
    sweep = f"avmae sweep experiments/quickstart.yaml --storage /shared/runs --address 10.1.2.3:{port}"
    assert sweeps == [sweep]
    assert calls.index(sweeps[0]) > max(calls.index(c) for c in [head, *workers])


def test_sigterm_from_slurm_reaches_the_sweep(tmp_path):
    """Slurm's warning before the time limit (and scancel's) is passed on, so the sweep can record it."""
    env = fake_slurm(tmp_path, ["node1"], sweep_s=30)
    proc = subprocess.Popen(["bash", str(SBATCH), "study.yaml"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = tmp_path / "calls.log"
    deadline = time.monotonic() + 20
    while not (log.exists() and "avmae sweep" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    time.sleep(0.5)  # the stub's TERM trap is set before it logs; the batch shell's right after starting it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 130
    assert "avmae got TERM" in log.read_text()


def test_the_sbatch_script_refuses_to_run_without_a_ray_token(tmp_path):
    env = fake_slurm(tmp_path, ["node1"])
    (tmp_path / ".ray" / "auth_token").unlink()
    result = subprocess.run(["bash", str(SBATCH), "study.yaml"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "ray get-auth-token --generate" in result.stderr
    assert not (tmp_path / "calls.log").exists()  # nothing started
