"""Throughput of one AV-MAE pretraining step (forward, backward, AdamW), without Ray or MLflow.

Every speed-up is a ratio against a naive eager fp32 run of the same model measured in the same process.
Prints per configuration: clips/s, ms/step, model TFLOP/s (torch.utils.flop_counter), MFU, peak memory.

    python bench/train_step.py                      # all GPU configurations (H100/H200)
    python bench/train_step.py --only anchor-b128   # one configuration
    python bench/train_step.py --tiny               # CPU smoke test of the same code path

Runs from a bare checkout too (no `pip install`): see bench/checkout.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from checkout import import_module
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16


@dataclass
class Config:
    name: str
    family: str  # configurations of one family share a model; its naive run is their baseline
    preset: str
    batch: int
    model: dict = field(default_factory=dict)
    naive: bool = False  # eager fp32, math attention, per-tensor AdamW: the in-run baseline
    compile: bool | str = False  # True or a torch.compile mode ("reduce-overhead": CUDA graphs)
    attention: str | None = None  # force one SDPA backend ("flash", "cudnn", "efficient"); None: torch picks


# CAV-MAE's public model, as the reference: audio 1024x128 + one 224^2 frame, ViT-B with
# 11 modality-specific + 1 joint layer, joint decoder 512 wide 8 deep, masks 0.75/0.75.
ANCHOR = dict(
    fusion="mid", fusion_layers=1, decoder="joint", decoder_embed_dim=512, decoder_depth=8,
    decoder_num_heads=16, audio_frames=1024, num_frames=1, tubelet_size=1, img_size=224,
    mask_ratio_audio=0.75, mask_ratio_video=0.75,
)
# The paper at its own scale: AudioSet input (10 s audio, 16 frames), masks 0.9 video / 0.7 audio,
# mid fusion with 2 joint layers and the released shared decoder.
PAPER = dict(input="audioset", fusion="mid", fusion_layers=2, decoder="shared",
             mask_ratio_audio=0.7, mask_ratio_video=0.9)

AUTOTUNE = "max-autotune-no-cudagraphs"
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}

GPU_CONFIGS = [
    Config("anchor-b48-naive", "anchor", "base", 48, ANCHOR, naive=True),
    Config("anchor-b128", "anchor", "base", 128, ANCHOR),
    Config("anchor-b128-compiled", "anchor", "base", 128, ANCHOR, compile=True),
    Config("vitl-paper-b32-naive", "vitl-paper", "large", 32, PAPER, naive=True),
    Config("vitl-paper-b128-compiled", "vitl-paper", "large", 128, PAPER, compile=True),
    Config("anchor-b128-cudagraphs", "anchor", "base", 128, ANCHOR, compile="reduce-overhead"),
    Config("anchor-b48", "anchor", "base", 48, ANCHOR),
    Config("anchor-b128-flash", "anchor", "base", 128, ANCHOR, attention="flash"),
    Config("vitl-paper-b128", "vitl-paper", "large", 128, PAPER),
    Config("vitl-paper-b192-compiled", "vitl-paper", "large", 192, PAPER, compile=True),
    Config("vitb-paper-b64-naive", "vitb-paper", "base", 64, PAPER, naive=True),
    Config("vitb-paper-b256-compiled", "vitb-paper", "base", 256, PAPER, compile=True),
]
# Only with --only: Inductor's GEMM templates with GELU and bias fused in (the profiles' next step 2) take
# minutes of autotuning each, too long for the default run.
AUTOTUNE_CONFIGS = [
    Config("vitl-paper-b128-autotune", "vitl-paper", "large", 128, PAPER, compile=AUTOTUNE),
    Config("anchor-b128-autotune", "anchor", "base", 128, ANCHOR, compile=AUTOTUNE),
]
TINY_CONFIGS = [
    Config("tiny-naive", "tiny", "tiny", 8, naive=True),
    Config("tiny", "tiny", "tiny", 8),
    Config("tiny-compiled", "tiny", "tiny", 8, compile=True),
    Config("tiny-cudagraphs", "tiny", "tiny", 8, compile="reduce-overhead"),
]


def make_inputs(model, batch: int, device: torch.device, n_sets: int = 2) -> list[tuple[torch.Tensor, ...]]:
    """Random inputs of the model's own geometry, as the loaders deliver them (float log-mel, uint8 pixels),
    a few sets to rotate through (no cache-resident reuse)."""
    shapes = model.input_shapes
    return [
        (torch.randn(batch, *shapes["audio"], device=device),
         torch.randint(0, 256, (batch, *shapes["video"]), dtype=torch.uint8, device=device))
        for _ in range(n_sets)
    ]


def count_flops(models, cfg: Config, device: torch.device) -> float:
    """FLOPs of one forward+backward at this batch, counted on an eager copy (compiled code hides ops)."""
    model = models.create_model(cfg.preset, **cfg.model).to(device)
    audio, video = make_inputs(model, cfg.batch, device, n_sets=1)[0]
    with FlopCounterMode(display=False) as counter:
        model(audio, video).loss.backward()
    del model
    return float(counter.get_total_flops())


def profile(step, inputs, device: torch.device, rows: int) -> str:
    """Top kernels of three steps by device time (torch.profiler), to show where a step's time goes, and
    the device's busy time per step (kernel time summed), to tell a GPU-bound step from a launch-bound one."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(3):
            step(*inputs[i % len(inputs)])
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    # Kernels are counted under the CPU op that launched them (as the table's total): no double counting.
    busy_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CPU) / 3 / 1000
    table = events.table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    return f"{table}\ndevice busy {busy_ms:.1f} ms per step (kernel time summed)"


def run(models, cfg: Config, device: torch.device, warmup: int, steps: int, profile_rows: int) -> dict:
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    import timm.layers

    timm.layers.set_fused_attn(not cfg.naive)  # read when the Attention modules are built
    model = models.create_model(cfg.preset, **cfg.model).to(device)
    timm.layers.set_fused_attn(True)
    if cfg.naive:
        lr = 1.5e-4 * cfg.batch / 256
        optimizer = torch.optim.AdamW(models.param_groups(model), lr=lr, betas=(0.9, 0.95), foreach=False)
    else:
        optimizer = models.build_optimizer(model, base_lr=1.5e-4, batch_size=cfg.batch)
    scheduler = models.warmup_cosine(optimizer, warmup_steps=10, total_steps=10_000)
    step = models.TrainStep(model, optimizer, scheduler, amp_dtype=None if cfg.naive else "auto",
                            compile=cfg.compile)
    inputs = make_inputs(model, cfg.batch, device)
    t0 = time.perf_counter()
    for i in range(warmup):
        metrics = step(*inputs[i % len(inputs)])
    first_loss = float(metrics.loss)  # syncs: warm-up (and compilation) done
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        metrics = step(*inputs[i % len(inputs)])
    last_loss = float(metrics.loss)
    elapsed = time.perf_counter() - t0
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if profile_rows:
        print(f"# profile of {cfg.name}\n{profile(step, inputs, device, profile_rows)}", flush=True)
    del step, optimizer, model, inputs
    return dict(warmup_s=round(warmup_s, 1), ms_per_step=1000 * elapsed / steps,
                clips_per_s=cfg.batch * steps / elapsed, peak_mem_gib=peak_gib,
                loss_first=first_loss, loss_last=last_loss)


def sdpa_backend(name: str | None):
    """Restrict scaled_dot_product_attention to one backend, or leave torch's choice."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke test of the same code path")
    parser.add_argument("--only", nargs="*", help="run only these configuration names")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", nargs="*", default=[], help="profile these configurations")
    parser.add_argument("--profile-rows", type=int, default=18, help="kernels listed per profile")
    args = parser.parse_args()

    models = import_module("avmae.models")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    configs = TINY_CONFIGS if args.tiny else GPU_CONFIGS
    if args.only:
        configs = [c for c in [*configs, *AUTOTUNE_CONFIGS] if c.name in args.only]
    warmup = args.warmup or (3 if args.tiny else 8)
    steps = args.steps or (5 if args.tiny else 20)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # the naive baseline is true fp32
    print(f"# {device_name}, torch {torch.__version__}", flush=True)
    results, naive = [], {}
    for cfg in configs:
        rows = args.profile_rows if cfg.name in args.profile else 0
        res = measure_config(models, cfg, device, warmup, steps, rows)
        if res is None:
            continue
        res["device"] = device_name
        if cfg.naive:
            naive[cfg.family] = res["clips_per_s"]
        res["x_naive"] = res["clips_per_s"] / naive.get(cfg.family, float("nan"))
        results.append(res)
        print(json.dumps(res), flush=True)
        if args.json:  # after every configuration: a run cut short keeps what it measured
            args.json.write_text(json.dumps(results, indent=1))
    print_table(results)


def measure_config(models: Any, cfg: Any, device: torch.device, warmup: int, steps: int, rows: int
                   ) -> dict[str, Any] | None:
    """One configuration's step time, throughput and FLOP rate; None (and why, printed) when it failed."""
    try:
        flops = count_flops(models, cfg, device)
        with sdpa_backend(cfg.attention):
            res = run(models, cfg, device, warmup, steps, rows)
    except torch.OutOfMemoryError:
        print(f"{cfg.name}: out of memory at batch {cfg.batch}", flush=True)
        torch.cuda.empty_cache()
        return None
    except Exception as err:  # one failing configuration must not cost the run's other figures
        print(f"{cfg.name}: failed: {type(err).__name__}: {err}", flush=True)
        torch.cuda.empty_cache()
        return None
    tflops = flops / 1e12 * res["clips_per_s"] / cfg.batch
    res.update(name=cfg.name, config=asdict(cfg), tflop_per_step=flops / 1e12, tflops=tflops,
               mfu=tflops / PEAK_BF16_TFLOPS, torch=torch.__version__)
    return res


def print_table(results: list[dict[str, Any]]) -> None:
    header = ("config", "clips/s", "ms/step", "TFLOP/s", "MFU", "mem GiB", "x naive")
    print("\n{:28} {:>9} {:>8} {:>8} {:>6} {:>8} {:>8}".format(*header))
    for r in results:
        print(f"{r['name']:28} {r['clips_per_s']:9.1f} {r['ms_per_step']:8.1f} {r['tflops']:8.1f} "
              f"{100 * r['mfu']:5.1f}% {r['peak_mem_gib']:8.1f} {r['x_naive']:8.2f}")

if __name__ == "__main__":
    main()
