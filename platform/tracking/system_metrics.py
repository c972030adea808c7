"""What a trial's rank 0 costs the machine, read once per log window, so that a slow trial can be told from a
starved one (a loader at its CPU cap while the GPU idles).

`SystemSampler.read()` returns MLflow's system-metric names (`mlflow/system_metrics/metrics/`: the machine's
`system/cpu_utilization_percentage`, `system/system_memory_usage_{megabytes,percentage}` and
`system/gpu_<i>_{utilization_percentage,memory_usage_megabytes,memory_usage_percentage,power_usage_watts}`),
plus the trial's own share: `system/process_cpu_utilization_percentage` (100 = one core busy) and
`system/process_memory_rss_megabytes`, summed over rank 0's process and its descendants (loader workers,
compile workers). The trainer merges them into its history records, which MLflow logs on the driver: the
workers never talk to MLflow. Throughput is there already (`train/clips_per_s`).

No thread: CPU use comes from cumulative counters (Linux `/proc`), so one read per window gives the
window's mean. A read looks at every process's `/proc/PID/stat` once (the kernel may not list children
elsewhere): 3-4 ms for 100 processes on the busy 2-core development machine, some tens of ms on a node
with thousands, per log window. GPU utilisation and power are NVML's own averages over its last sample period
(1/6 to 1 s, read as the window ends); they need `nvidia-ml-py` (torch reads NVML through it) and are left
out without it, while GPU memory comes from CUDA itself. `<i>` is the device's index in this process
(`cuda:<i>`, 0 for a Ray worker with one GPU), so the names agree across trials on different physical
GPUs. Without `/proc` (macOS) only the process's own CPU use and the GPU are read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from avmae.platform.tracking import layout as T

CPU = "system/cpu_utilization_percentage"
MEMORY_MB = "system/system_memory_usage_megabytes"
MEMORY_PERCENT = "system/system_memory_usage_percentage"
PROCESS_CPU = T.SYSTEM_PROCESS_CPU
PROCESS_RSS_MB = "system/process_memory_rss_megabytes"
MB = 1e6  # MLflow's megabytes


def gpu_metric(index: int, what: str) -> str:
    """e.g. gpu_metric(0, "utilization_percentage") -> "system/gpu_0_utilization_percentage"."""
    return f"system/gpu_{index}_{what}"


class SystemSampler:
    """Rank 0's sampler: create it before the first window; each `read()` covers the time since the last."""

    def __init__(self, device: torch.device | str | None = None, pid: int | None = None,
                 proc: Path = Path("/proc")) -> None:
        self.device = torch.device(device) if device is not None else None
        self.pid, self.proc = pid or os.getpid(), proc
        self.linux = (proc / "stat").is_file()
        self.ticks = os.sysconf("SC_CLK_TCK") if self.linux else 1
        self.page = os.sysconf("SC_PAGE_SIZE") if self.linux else 1
        self.nvml = True  # until torch says nvidia-ml-py is missing
        self._last = (time.monotonic(), self._machine_ticks(), self._tree_cpu_s()[0])

    def read(self) -> dict[str, float]:
        """The metrics since the last read (or since the sampler was made)."""
        now, machine, (tree_cpu, rss) = time.monotonic(), self._machine_ticks(), self._tree_cpu_s()
        (then, machine_then, tree_then), self._last = self._last, (now, machine, tree_cpu)
        wall = max(now - then, 1e-9)
        metrics = {PROCESS_CPU: max(tree_cpu - tree_then, 0.0) / wall * 100}
        if self.linux:
            busy, total = machine[0] - machine_then[0], machine[1] - machine_then[1]
            metrics[CPU] = busy / total * 100 if total > 0 else 0.0
            metrics[PROCESS_RSS_MB] = rss / MB
            metrics.update(self._memory())
        if self.device is not None and self.device.type == "cuda":
            metrics.update(self._gpu())
        return metrics

    def _machine_ticks(self) -> tuple[int, int]:
        """(busy, total) CPU ticks of the machine since boot."""
        if not self.linux:
            return 0, 0
        fields = [int(x) for x in (self.proc / "stat").read_text().split("\n", 1)[0].split()[1:9]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _tree_cpu_s(self) -> tuple[float, int]:
        """(CPU seconds, RSS bytes) of the process and its descendants. A process's own time plus its reaped
        children's (`cutime`): a worker that exits moves its time into its parent's, not out of the sum."""
        if not self.linux:
            t = os.times()
            return t.user + t.system + t.children_user + t.children_system, 0
        stats, children = {}, {}  # one pass over /proc: loader workers started since the last read count
        for entry in os.scandir(self.proc):
            if entry.name.isdigit():
                rest = self._stat(int(entry.name))
                if rest is not None:
                    stats[int(entry.name)] = rest
                    children.setdefault(int(rest.split(maxsplit=2)[1]), []).append(int(entry.name))
        ticks = rss = 0
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            if pid in stats:
                fields = stats[pid].split()
                ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
                rss += int(fields[21]) * self.page
            todo.extend(children.get(pid, []))
        return ticks / self.ticks, rss

    def _stat(self, pid: int) -> str | None:
        """/proc/PID/stat after the command name (from field 3, the state); None if the process is gone."""
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        return text[text.rindex(")") + 2:]

    def _memory(self) -> dict[str, float]:
        """The machine's memory in use: total less what is available (page cache that can be dropped is not
        in use)."""
        info = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                info[name] = int(value.split()[0]) * 1024
        used = info["MemTotal"] - info["MemAvailable"]
        return {MEMORY_MB: used / MB, MEMORY_PERCENT: used / info["MemTotal"] * 100}

    def _gpu(self) -> dict[str, float]:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        metrics = {gpu_metric(index, "memory_usage_megabytes"): (total - free) / MB,
                   gpu_metric(index, "memory_usage_percentage"): (total - free) / total * 100}
        if self.nvml:
            try:
                metrics[gpu_metric(index, "utilization_percentage")] = float(torch.cuda.utilization(index))
                metrics[gpu_metric(index, "power_usage_watts")] = torch.cuda.power_draw(index) / 1000
            except ModuleNotFoundError:  # no nvidia-ml-py: memory only, and no second try
                self.nvml = False
        return metrics
