"""The `finetune:` section of a study file: which settings are fine-tuned after pretraining, with which
recipe, over which small LR grid, and whether the from-scratch row runs beside them.

    finetune:
      settings: [av, audio, video]     # each its own run
      recipe: vggsound                 # vggsound | audioset (models.FINETUNE) | miniature
      overrides: {num_classes: 10}     # any FinetuneConfig field
      lrs: [0.4, 0.8]                  # optional: every cell is judged at its best LR of these
      epochs: 50                       # optional: the recipe's
      batch_size: 64                   # optional: the recipe's; global, split over the study's workers
      scratch: true                    # the same classifier from random init, same recipe and seeds

The recipe resolves through `models.resolve_finetune_config` (and the miniature's through
`evaluation.recipes.miniature_recipe`), so a field name or value the model refuses fails here, named.
"""

from __future__ import annotations

from typing import Any, Literal

from avmae.models import FinetuneConfig, resolve_finetune_config
from pydantic import BaseModel, ConfigDict, Field, model_validator

RECIPES = ("vggsound", "audioset", "miniature")
SETTINGS = ("av", "audio", "video")
Scalar = bool | int | float | str | None


class FinetuneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: list[Literal["av", "audio", "video"]] = Field(default_factory=lambda: list(SETTINGS),
                                                          min_length=1)
    recipe: Literal["vggsound", "audioset", "miniature"] = "vggsound"
    overrides: dict[str, Scalar] = {}
    lrs: list[float] | None = Field(None, min_length=1, max_length=8)  # None: the recipe's LR alone
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    scratch: bool = True
    train_split: str = "train"
    test_split: str = "test"

    @model_validator(mode="after")
    def _resolves(self) -> FinetuneSpec:
        unique = set(self.settings)
        if len(unique) != len(self.settings):
            raise ValueError(f"settings repeats a setting: {self.settings}")
        if self.lrs is not None and (any(lr <= 0 for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs)):
            raise ValueError(f"lrs must be distinct numbers > 0, got {self.lrs}")
        fixed = {"modality", "lr", "epochs", "batch_size"} & set(self.overrides)
        if fixed:
            raise ValueError(f"overrides.{sorted(fixed)[0]}: set it with finetune.settings, lrs, epochs or "
                             "batch_size")
        allowed = set(FinetuneConfig.__dataclass_fields__)
        for name in self.overrides:
            if name not in allowed:
                raise ValueError(f"overrides.{name}: not a FinetuneConfig field; allowed: "
                                 + ", ".join(sorted(allowed)))
        for setting in self.settings:
            for lr in self.grid():
                try:
                    self.resolve(setting, lr)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"setting {setting}, lr {lr:g}: {err}") from None
        return self

    def base(self, **fields: Any) -> FinetuneConfig:
        """The recipe with `fields` and the overrides."""
        if self.recipe == "miniature":
            from avmae.platform.evaluation.recipes import miniature_recipe

            return miniature_recipe(**{**self.overrides, **fields})
        return resolve_finetune_config(self.recipe, **{**self.overrides, **fields})

    def grid(self) -> list[float]:
        """The LRs every cell is fine-tuned at."""
        return list(self.lrs) if self.lrs is not None else [self.base().lr]

    def resolve(self, setting: str, lr: float) -> FinetuneConfig:
        """One run's recipe: `setting`'s classifier at `lr`, with the section's epochs and batch size."""
        fields: dict[str, Any] = {"modality": setting, "lr": lr}
        if self.epochs is not None:
            fields["epochs"] = self.epochs
            base = self.base()
            if base.warmup_epochs >= self.epochs:  # the recipe's warmup scaled to the shorter run
                fields["warmup_epochs"] = base.warmup_epochs * self.epochs / base.epochs
        if self.batch_size is not None:
            fields["batch_size"] = self.batch_size
        return self.base(**fields)
