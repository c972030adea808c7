"""Peak memory of a command and every process it starts (Ray's raylet, workers, Train actors...), sampled
from /proc (Linux) once a second: summed RSS, summed PSS, process count and the largest process.

Summed RSS counts a shared library once per process that maps it (the CUDA build of torch, in every process
that imports torch); PSS divides shared pages among their users, so summed PSS is the tree's real footprint.

    .venv/bin/python bench/tree_memory.py -- .venv/bin/avmae sweep experiments/quickstart.yaml --name mem
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

PROC = Path("/proc")


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_pss_kib(pid: int) -> tuple[int, int] | None:
    try:
        lines = (PROC / str(pid) / "smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    values = {line.split(":")[0]: int(line.split()[1]) for line in lines[1:] if line.endswith("kB")}
    return values.get("Rss", 0), values.get("Pss", 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="also write the peaks here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    began = time.monotonic()
    proc = subprocess.Popen(command)
    peak = {"rss_gib": 0.0, "pss_gib": 0.0, "processes": 0, "largest_process_gib": 0.0}
    while proc.poll() is None:
        sizes = [s for s in map(rss_pss_kib, descendants(proc.pid)) if s is not None]
        rss = [r / 2**20 for r, _ in sizes]
        sample = {"rss_gib": sum(rss), "pss_gib": sum(p for _, p in sizes) / 2**20, "processes": len(sizes),
                  "largest_process_gib": max(rss, default=0.0)}
        peak = {k: max(v, sample[k]) for k, v in peak.items()}
        time.sleep(args.interval)
    result = {"command": command, "exit": proc.returncode, "wall_s": round(time.monotonic() - began, 1),
              **{k: round(v, 2) if isinstance(v, float) else v for k, v in peak.items()}}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
