"""Whether a study's trials can ever start where it runs, checked before any trial: a request no node can
satisfy is refused in seconds, naming the resource, instead of every trial waiting out Train's worker-group
timeouts (3 x 60 s a trial) and failing.

A trial's Train run places `workers` bundles of {CPU: cpus_per_worker, GPU: gpus_per_worker} at once; each
bundle must fit on one node.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping

from avmae.platform.study.spec import StudySpec

Node = Mapping[str, float]


class ResourceError(ValueError):
    """A trial asks for more than the machines can ever give it."""


def worker_bundle(spec: StudySpec) -> dict[str, float]:
    res = spec.resources
    return {k: v for k, v in (("CPU", res.cpus_per_worker), ("GPU", res.gpus_per_worker)) if v}


def workers_that_fit(bundle: Mapping[str, float], nodes: list[Node]) -> int:
    """How many worker bundles the nodes hold at once (each bundle on one node)."""
    return sum(min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items()) for node in nodes)


def check_fits(spec: StudySpec, nodes: list[Node], where: str) -> None:
    """Raise `ResourceError` naming what is short when one trial's workers cannot all be placed."""
    bundle, workers = worker_bundle(spec), spec.resources.workers
    if workers_that_fit(bundle, nodes) >= workers:
        return
    largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in bundle}
    short = [k for k, v in bundle.items() if largest[k] < v] or list(bundle)
    field = {"CPU": "cpus_per_worker", "GPU": "gpus_per_worker"}
    have = ", ".join(f"{k} {largest[k]:g}" for k in bundle)
    raise ResourceError(
        f"a trial needs {workers} worker(s) of {{{', '.join(f'{k}: {v:g}' for k, v in bundle.items())}}}, "
        f"but {where} has at most {have} on one node ({len(nodes)} node(s)): lower resources."
        + " or resources.".join(field[k] for k in short)
        + (" or resources.workers" if workers > 1 else "")
        + (", or run on a cluster with --address" if where == "this machine" else "")
    )


def local_nodes() -> list[Node]:
    """What a local Ray runtime started for the job will offer: this machine's cores and GPUs."""
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(local_gpus())}]


def local_gpus() -> int:
    """NVIDIA GPUs visible here, without importing torch (`--dry-run` stays fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return sum(line.startswith("GPU ") for line in out.splitlines())


def ray_nodes() -> list[Node]:
    """The live nodes of the connected Ray runtime, with what each declares."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]
