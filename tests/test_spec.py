"""Study files: every shipped one validates and dry-runs; invalid ones fail before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from avmae.platform.spec import Grid, Range, SpecError, load_spec, parse_spec
from avmae.platform.sweep_cli import sweep
from click.testing import CliRunner
from conftest import REPO, TINY_STUDY

SHIPPED = sorted((REPO / "experiments").rglob("*.yaml"))



def with_(**changes: object) -> dict:
    return {**TINY_STUDY, **changes}


def test_the_paper_studies_and_the_quickstart_are_shipped():
    names = {p.relative_to(REPO / "experiments").as_posix() for p in SHIPPED}
    assert {"quickstart.yaml", "paper/fusion_ablation.yaml", "paper/lr_stability.yaml",
            "paper/masking_ratio.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO / "experiments").as_posix())
def test_every_shipped_study_dry_runs(path: Path):
    result = CliRunner().invoke(sweep, [str(path), "--dry-run", "--storage", "/tmp/unused"])
    assert result.exit_code == 0, result.output
    spec = load_spec(path)
    assert f"Cells: {len(spec.cells())}" in result.output
    assert f"Trials: {len(spec.cells()) * spec.trials_in_cell}" in result.output
    for name in spec.search:
        assert f"  {name}: " in result.output
    assert "Per trial:" in result.output and "MLflow:" in result.output


def test_fusion_ablation_covers_every_fusion_decoder_objective_cell():
    spec = load_spec(REPO / "experiments/paper/fusion_ablation.yaml")
    assert spec.model.preset == "base" and spec.data.kind == "vggsound"
    assert len(spec.cells()) == 4 * 3 * 2
    assert {c["fusion"] for c in spec.cells()} == {"early", "late", "shared", "mid"}


def test_lr_stability_is_a_grid_around_1_6e_4_for_both_objectives():
    spec = load_spec(REPO / "experiments/paper/lr_stability.yaml")
    assert spec.axes == {"objective": ["joint", "inpainting"]}
    lr = spec.search["lr"]
    assert isinstance(lr, Grid) and 1.6e-4 in lr.values and min(lr.values) < 1.6e-4 < max(lr.values)
    assert not spec.searched_by_optuna and spec.scheduler.name == "fifo"


def test_quickstart_asks_the_three_questions_on_av_digits():
    spec = load_spec(REPO / "experiments/quickstart.yaml")
    assert spec.data.kind == "av-digits" and spec.model.preset == "tiny"
    assert set(spec.axes) == {"fusion", "objective"}
    assert {"lr", "mask_ratio_audio", "mask_ratio_video"} <= set(spec.search)
    assert spec.searched_by_optuna and spec.evaluation.probe == ["av", "audio", "video"]


def test_cells_are_the_product_of_the_axes_in_file_order():
    spec = parse_spec(TINY_STUDY)
    assert spec.cells() == [
        {"fusion": "early", "objective": "joint"}, {"fusion": "early", "objective": "inpainting"},
        {"fusion": "mid", "objective": "joint"}, {"fusion": "mid", "objective": "inpainting"},
    ]
    assert parse_spec(with_(axes={})).cells() == [{}]


def test_yaml_exponents_are_numbers(tmp_path: Path):
    text = yaml.safe_dump(TINY_STUDY).replace("0.01", "1e-2")
    (tmp_path / "s.yaml").write_text(text + "\n")
    search = load_spec(tmp_path / "s.yaml").search
    assert isinstance(search["lr"], Range) and search["lr"].high == pytest.approx(1e-2)
    grid = parse_spec(with_(search={"lr": {"dist": "grid", "values": [1e-4, 2e-4]}})).search["lr"]
    assert grid.values == [1e-4, 2e-4]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"axes": {"fusion": ["early", "bogus"]}}, ["axes.fusion=bogus", "early, late, shared, mid"]),
        ({"search": {"lr": {"dist": "logunifrom", "low": 1e-4, "high": 1e-2}}},
         ["search.lr", "'uniform', 'loguniform', 'choice', 'grid'"]),
        ({"search": {"lrate": {"dist": "uniform", "low": 0.1, "high": 0.2}}},
         ["search.lrate", "unknown parameter", "lr, weight_decay, warmup_epochs", "mask_ratio_audio"]),
        ({"search": {"lr": {"dist": "uniform", "low": 0.2, "high": 0.1}}}, ["search.lr", "below high"]),
        ({"search": {"mask_ratio_audio": {"dist": "uniform", "low": 0.0, "high": 0.5}}},
         ["search.mask_ratio_audio=0.0", "(0, 1)"]),
        ({"scheduler": {"name": "hyperband"}}, ["scheduler.name", "'asha' or 'fifo'"]),
        ({"data": {"kind": "vgg", "root": "/x"}}, ["data.kind", "'vggsound', 'audioset', 'epic'"]),
        ({"metric": "val/loss", "data": {"kind": "av-digits", "root": "/x"}}, ["needs data.val_split"]),
        ({"resources": {"gpus_per_worker": 1.5}}, ["resources.gpus_per_worker", "fraction"]),
        ({"train": {"epochs": 0, "batch_size": 8}}, ["train.epochs", "greater than or equal to 1"]),
        ({"trials": 3}, ["trials", "Extra inputs are not permitted"]),
        ({"model": {"preset": "huge"}}, ["model: unknown preset 'huge'", "tiny, small, base, large"]),
        ({"model": {"preset": "tiny", "overrides": {"fusion": "mid"}}}, ["model.overrides fixes ['fusion']"]),
        ({"axes": {"lr": [1e-4]}, "search": {"lr": {"dist": "grid", "values": [1e-3]}}}, ["both axes and"]),
        ({"axes": {"lr": ["fast"]}, "search": {}}, ["axes.lr=fast", "must be a number"]),
    ],
)
def test_invalid_studies_fail_naming_the_field(changes: dict, expected: list[str]):
    with pytest.raises(SpecError) as err:
        parse_spec(with_(**changes))
    for text in expected:
        assert text in str(err.value)


def test_the_cli_reports_an_invalid_study_and_starts_nothing(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_(scheduler={"name": "pbt"})))
    result = CliRunner().invoke(sweep, [str(path), "--storage", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "scheduler.name" in result.output
    assert not (tmp_path / "runs").exists()


def test_speech_is_only_for_av_digits(tmp_path: Path):
    path = tmp_path / "vgg.yaml"
    path.write_text(yaml.safe_dump(with_(data={"kind": "vggsound", "root": "/x", "index": "/x.csv"})))
    result = CliRunner().invoke(sweep, [str(path), "--dry-run", "--speech", str(tmp_path)])
    assert result.exit_code != 0 and "--speech is for AV-Digits" in result.output


def test_search_space_becomes_tune_domains_and_optuna_only_without_grid():
    from avmae.platform.study import param_space, tune_config
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    spec = parse_spec(TINY_STUDY)
    space = param_space(spec, {"fusion": "mid", "objective": "joint"})
    assert space["fusion"] == "mid" and isinstance(space["lr"], tune.search.sample.Float)
    config = tune_config(spec)
    assert isinstance(config.search_alg, OptunaSearch) and config.num_samples == 3
    assert config.metric == "train/loss" and config.mode == "min" and not config.reuse_actors  # ASHA

    grid = parse_spec(with_(search={"lr": {"dist": "grid", "values": [1e-4, 1e-3]}}, trials_per_cell=2))
    assert param_space(grid, {})["lr"] == {"grid_search": [1e-4, 1e-3]}
    assert tune_config(grid).search_alg is None and grid.trials_in_cell == 4
    fifo = parse_spec(with_(scheduler={"name": "fifo"}))
    assert tune_config(fifo).reuse_actors and type(tune_config(fifo).scheduler).__name__ == "FIFOScheduler"


def test_reading_a_study_does_not_import_torch():
    """What `avmae sweep FILE --dry-run` does (validate every shipped study against the model's own checks,
    describe it) must not pay seconds for torch and timm."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "from avmae.platform.plan import describe\n"
        "from avmae.platform.prepare import absolute\n"
        "from avmae.platform.spec import load_spec\n"
        "for path in sorted(pathlib.Path('experiments').rglob('*.yaml')):\n"
        "    describe(absolute(load_spec(path)), '/tmp/studies', 'sqlite:///mlflow.db', None)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
