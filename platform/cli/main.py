"""The `avmae` command line. Subcommands load lazily, so `avmae --help` needs no torch or Ray."""

from __future__ import annotations

import importlib
import os

import click

# name -> ("module:attribute" of a click command or group, one-line help shown by `avmae --help`).
SUBCOMMANDS = {
    "data": ("avmae.platform.data.cli:data", "Build AV-Digits, scan a dataset for broken files, cache it."),
    "sweep": ("avmae.platform.cli.sweep:sweep", "Run a study file: Ray Tune + Optuna over AV-MAE variants."),
    "dashboard": ("avmae.dashboards.cli:dashboard", "Build a study's HTML dashboard from MLflow."),
    "status": ("avmae.platform.cli.status:status",
               "List the studies in MLflow, or a study's progress and ETA."),
    "mlflow": ("avmae.platform.cli.flush:mlflow_group", "Send to MLflow what a study left queued (flush)."),
    "finetune": ("avmae.platform.cli.finetune:finetune",
                 "Fine-tune each cell's best configuration of a study whose pretraining ended."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when one is run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module_name, attr = SUBCOMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in SUBCOMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="avmae")
def main() -> None:
    """avmae: hyperparameter studies of Audiovisual Masked Autoencoders (AV-MAE).

    \b
    Typical use:
      avmae sweep experiments/quickstart.yaml      a small study on AV-Digits
      avmae sweep experiments/paper/lr_stability.yaml --dry-run --address auto
      avmae dashboard quickstart                   rebuild a study's dashboard
      avmae status [quickstart]                    studies in MLflow; a study's progress per cell

    Run `avmae COMMAND --help` for a command's options.
    """
    # MLflow prints two links ("View run ... / View experiment ...") for every run it ends on a tracking
    # server: a study's hundreds of trial runs would bury the progress lines, whose closing lines name the
    # server once. A user who wants the links sets the variable to false.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

