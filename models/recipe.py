"""The pretraining recipe shared by the Ray platform and the GPU benchmark (imports torch only).

AdamW beta=(0.9, 0.95), weight decay 0.05 on weight matrices only (not on learned tokens: `decay_split`),
lr = base_lr * batch / 256, linear warmup then cosine to 0, no gradient clipping (authors' code); bf16
autocast on CUDA. The fine-tuning recipe is `finetune.py`.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from .avmae import AVMAEOutput

log = logging.getLogger(__name__)


class DecaySplit(NamedTuple):
    """Parameter names (in `named_parameters()` order) with and without weight decay."""

    decay: list[str]
    no_decay: list[str]


def decay_split(model: nn.Module) -> DecaySplit:
    """timm's rule: decay the weight matrices (ndim >= 2) except those the model names in `no_weight_decay()`
    (learned tokens); never the 1-D parameters (biases, norm gains). Frozen parameters are left out."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in exempt else decay).append(name)
    return DecaySplit(decay, no_decay)


def param_groups(model: nn.Module, weight_decay: float = 0.05) -> list[dict]:
    """[decayed weight matrices, the rest at weight decay 0] (`decay_split`), as optimizer groups."""
    split, params = decay_split(model), dict(model.named_parameters())
    n_decay = sum(params[n].numel() for n in split.decay)
    n_rest = sum(params[n].numel() for n in split.no_decay)
    log.debug("weight decay %g on %d tensors (%d parameters); none on %d tensors (%d parameters)",
             weight_decay, len(split.decay), n_decay, len(split.no_decay), n_rest)
    return [{"params": [params[n] for n in split.decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in split.no_decay], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, base_lr: float, batch_size: int, weight_decay: float = 0.05,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW at lr = base_lr * batch_size / 256 (fused kernel on CUDA, multi-tensor foreach elsewhere)."""
    impl = {"fused": True} if next(model.parameters()).is_cuda else {"foreach": True}
    lr = base_lr * batch_size / 256
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **impl)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Per-step schedule: linear warmup to the full lr over `warmup_steps`, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class StepMetrics(NamedTuple):
    """Detached device tensors: read them (`.item()`) only when logging, to avoid a host sync per step."""

    loss: Tensor
    loss_audio: Tensor
    loss_video: Tensor
    grad_norm: Tensor


class TrainStep:
    """One optimisation step: autocast forward, backward, grad norm, optimizer and scheduler step.

    `amp_dtype="auto"` means bf16 on CUDA and fp32 elsewhere; `compile=True` wraps the model in
    `torch.compile` (or pass a compile mode: "reduce-overhead" replays forward and backward as CUDA graphs);
    `max_grad_norm=None` measures the gradient norm without clipping (as the paper).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 amp_dtype: torch.dtype | str | None = "auto", compile: bool | str = False,
                 max_grad_norm: float | None = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.device_type = next(model.parameters()).device.type
        if amp_dtype == "auto":
            amp_dtype = torch.bfloat16 if self.device_type == "cuda" else None
        self.amp_dtype = amp_dtype
        # Static shapes (fixed visible-token counts): a new batch size recompiles rather than tracing a
        # dynamic batch dimension, which torch 2.11 cannot feed to `torch.rand` in the masking.
        mode = compile if isinstance(compile, str) else None
        self.forward = torch.compile(model, dynamic=False, mode=mode) if compile else model
        self.cuda_graphs = mode == "reduce-overhead"
        self.params = [p for p in model.parameters() if p.requires_grad]

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def __call__(self, audio: Tensor, video: Tensor, weight: float = 1.0) -> StepMetrics:
        """One step. `weight` scales this process's loss: 0 makes a data-parallel rank that has no usable
        clip join the gradient all-reduce with a zero contribution (on dummy inputs) instead of skipping
        it."""
        self.model.train()
        if self.cuda_graphs:  # the last step's outputs (held as metrics) are read, not replayed over
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            out = self.forward(audio, video)
        (out.loss * weight if weight != 1.0 else out.loss).backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.max_grad_norm is None:
            grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        losses = (out.loss, out.loss_audio, out.loss_video, grad_norm)
        return StepMetrics(*(t.detach() for t in losses))

    @torch.no_grad()
    def evaluate(self, audio: Tensor, video: Tensor, generator: torch.Generator | int = 0) -> AVMAEOutput:
        """Validation reconstruction with fixed masks (the paper's pretraining eval); uncompiled."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                return self.model(audio, video, generator=generator)
        finally:
            self.model.train(was_training)
