"""Cost of running the training step inside a Ray Train worker, against the same step run bare.

Both sides run the identical loop (`avmae.models.TrainStep` on fixed random inputs of the model's own
geometry, one host sync and one `ray.train.report` per epoch, as the platform's worker loop does), so the
difference is what Ray adds around the step: the worker process, its thread settings, report calls.
Timed in-loop (steady state, after a warm-up epoch), alternating bare and Ray runs to cancel drift.

    python bench/ray_overhead.py                     # tiny model, batch 16, 1 CPU thread
    python bench/ray_overhead.py --preset small --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def step_loop(config: dict) -> float:
    """Seconds per step over `epochs` timed epochs, after one warm-up epoch. Reports each epoch inside Ray."""
    from avmae import models

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model = models.create_model(config["preset"])
    optimizer = models.build_optimizer(model, base_lr=1.5e-4, batch_size=config["batch"])
    step = models.TrainStep(model, optimizer, models.warmup_cosine(optimizer, 10, 10_000))
    shapes = model.input_shapes
    audio = torch.randn(config["batch"], *shapes["audio"])
    video = torch.rand(config["batch"], *shapes["video"]) * 2 - 1
    report = None
    if config["in_ray"]:
        import ray.train

        report = ray.train.report
    timed = []
    for epoch in range(config["epochs"] + 1):
        began = time.perf_counter()
        for _ in range(config["steps"]):
            metrics = step(audio, video)
        loss = float(metrics.loss)  # the one host sync per epoch
        if report is not None:
            report({"loss": loss, "epoch": epoch})
        if epoch:  # epoch 0 warms up
            timed.append((time.perf_counter() - began) / config["steps"])
    return statistics.median(timed)


def in_ray(config: dict) -> float:
    """The same loop as a one-worker TorchTrainer; the worker's timing comes back through its report."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def worker(cfg: dict) -> None:
        seconds = step_loop({**cfg, "in_ray": True})
        # Train V2's Result keeps the metrics that came with a checkpoint.
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"seconds_per_step": seconds}, checkpoint=checkpoint)

    trainer = TorchTrainer(
        worker, train_loop_config={**config, "in_ray": True},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": config["threads"]}),
        run_config=RunConfig(name=f"ray_overhead_{time.time_ns()}", storage_path=config["storage"]),
    )
    return trainer.fit().metrics["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run")
    parser.add_argument("--rounds", type=int, default=3, help="bare/Ray pairs, alternating")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=max(2, args.threads), include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
    config = dict(preset=args.preset, batch=args.batch, threads=args.threads, steps=args.steps,
                  epochs=args.epochs, in_ray=False, storage=tempfile.mkdtemp(prefix="ray_overhead_"))
    bare, rayed = [], []
    for _ in range(args.rounds):
        bare.append(step_loop(config))
        rayed.append(in_ray(config))
        print(f"bare {1000 * bare[-1]:.1f} ms/step, Ray Train worker {1000 * rayed[-1]:.1f} ms/step",
              flush=True)
    ratios = [r / b for r, b in zip(rayed, bare, strict=True)]
    print(f"\n{args.preset}, batch {args.batch}, {args.threads} thread(s): median bare "
          f"{1000 * statistics.median(bare):.1f} ms/step, Ray {1000 * statistics.median(rayed):.1f} ms/step, "
          f"Ray/bare median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    ray.shutdown()


if __name__ == "__main__":
    main()
