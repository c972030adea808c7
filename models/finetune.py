"""The paper's fine-tuning recipe (`FinetuneConfig`) for an `MBTClassifier`, in pure torch: SGD with timm's
layer-wise lr decay, per-step warmup + cosine, mixup with "mixmod", label smoothing, grad-norm clipping.

    optim = build_finetune_optimizer(model, config, steps_per_epoch)
    metrics = finetune_step(model, optim, config, audio, video, labels)  # one call per step
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from .config import FinetuneConfig
from .recipe import warmup_cosine
from .tokenizers import video_to_unit_range


class FinetuneOptim(NamedTuple):
    optimizer: torch.optim.SGD
    scheduler: LambdaLR  # stepped once per optimisation step


class Mixed(NamedTuple):
    inputs: dict[str, Tensor]  # {modality: mixed input}; video as floats in [-1, 1]
    targets: dict[str, Tensor]  # {modality: [B, num_classes] soft targets}


class FinetuneMetrics(NamedTuple):
    """Detached device tensors, and the step's full (head) lr."""

    loss: Tensor
    grad_norm: Tensor
    lr: float


def build_finetune_optimizer(model: nn.Module, config: FinetuneConfig, steps_per_epoch: int) -> FinetuneOptim:
    """SGD (momentum `config.momentum`) over timm's `param_groups_layer_decay` (the model's `group_matcher`
    and `no_weight_decay`): group g at lr = config.lr * layer_decay ** (num_layers - 1 - g); a per-step
    linear warmup over `warmup_epochs`, then cosine to 0 at `epochs`."""
    groups = param_groups_layer_decay(model, weight_decay=config.weight_decay,
                                      no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=config.layer_decay)
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)
    return FinetuneOptim(optimizer, warmup_cosine(optimizer, *config.schedule_steps(steps_per_epoch)))


def mix_weights(alpha: float, modalities: tuple[str, ...], mixmod: bool) -> dict[str, float]:
    """Mixup weights lambda ~ Beta(alpha, alpha) from torch's global generator: one per modality under
    "mixmod", else one shared; all 1 (no mixing) when alpha is 0."""
    if alpha <= 0:
        return dict.fromkeys(modalities, 1.0)
    draws = torch.distributions.Beta(alpha, alpha).sample((len(modalities) if mixmod else 1,)).tolist()
    return {m: draws[i if mixmod else 0] for i, m in enumerate(modalities)}


def mixup_modalities(inputs: dict[str, Tensor], labels: Tensor, weights: dict[str, float], num_classes: int,
                     smoothing: float = 0.0, multilabel: bool = False) -> Mixed:
    """Mix each modality with the batch reversed at its weight, x_i <- l x_i + (1 - l) x_{B-1-i} (timm's and
    the authors' pairing), and give it timm's `mixup_target` at the same weight: smoothed one-hot targets
    (class indices [B]) or smoothed multi-hot ones (`multilabel`, [B, C]), mixed the same way."""
    mixed, targets = {}, {}
    for m, x in inputs.items():
        lam = weights[m]
        x = video_to_unit_range(x) if m == "video" else x
        mixed[m] = x if lam == 1.0 else x * lam + x.flip(0) * (1.0 - lam)
        targets[m] = mixup_target(labels, num_classes, lam, smoothing, multilabel)
    return Mixed(mixed, targets)


def finetune_loss(logits: dict[str, Tensor], targets: dict[str, Tensor], multilabel: bool = False) -> Tensor:
    """Mean over modalities of each modality's loss against its own targets (authors' Scenic losses):
    softmax cross-entropy with soft targets, or sigmoid BCE summed over classes; mean over the batch. fp32."""
    losses = []
    for m, z in logits.items():
        z, t = z.float(), targets[m].float()
        if multilabel:
            losses.append(F.binary_cross_entropy_with_logits(z, t, reduction="none").sum(dim=-1).mean())
        else:
            losses.append(F.cross_entropy(z, t))
    return torch.stack(losses).mean()


def finetune_step(model: nn.Module, optim: FinetuneOptim, config: FinetuneConfig, audio: Tensor | None,
                  video: Tensor | None, labels: Tensor, amp_dtype: torch.dtype | None = None,
                  weight: float = 1.0) -> FinetuneMetrics:
    """One optimisation step: mix, forward per-modality logits (under autocast to `amp_dtype` if given),
    loss, backward, clip the global grad norm to `max_grad_norm` (None: measure only), SGD and schedule step.
    labels: class indices [B], or multi-hot [B, num_classes] when `config.multilabel`. `weight` scales this
    process's loss: 0 makes a data-parallel rank with no usable clip join the gradient all-reduce with a zero
    contribution (on a dummy clip) instead of skipping it or sending NaN."""
    model.train()
    given = {"audio": audio, "video": video}
    inputs = {m: given[m] for m in config.modalities}
    weights = mix_weights(config.mixup_alpha, config.modalities, config.mixmod)
    mixed = mixup_modalities(inputs, labels, weights, config.num_classes, config.label_smoothing,
                             config.multilabel)
    device = next(iter(inputs.values())).device.type
    with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(**mixed.inputs, per_modality=True)
    loss = finetune_loss(logits, mixed.targets, config.multilabel)
    (loss * weight if weight != 1.0 else loss).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if config.max_grad_norm is None:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
    lr = max(group["lr"] for group in optim.optimizer.param_groups)
    optim.optimizer.step()
    optim.optimizer.zero_grad(set_to_none=True)
    optim.scheduler.step()
    return FinetuneMetrics(loss.detach(), grad_norm.detach(), lr)
