"""Study files: every shipped one validates and dry-runs; invalid ones fail before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from avmae.platform.cli.sweep import sweep
from avmae.platform.study.runner import study_search, tune_config
from avmae.platform.study.spec import REPEAT_KEY, Grid, Range, SpecError, load_spec, parse_spec, rank_seed
from click.testing import CliRunner
from conftest import REPO, TINY_STUDY
from ray import tune

SHIPPED = sorted((REPO / "experiments").rglob("*.yaml"))



def with_(**changes: object) -> dict:
    return {**TINY_STUDY, **changes}


def test_the_paper_studies_and_the_quickstart_are_shipped():
    names = {p.relative_to(REPO / "experiments").as_posix() for p in SHIPPED}
    assert {"quickstart.yaml", "paper/fusion_ablation.yaml", "paper/lr_stability.yaml",
            "paper/masking_ratio.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO / "experiments").as_posix())
def test_every_shipped_study_dry_runs(path: Path):
    cluster = ["--address", "ray://head:10001"] if "paper" in path.parts else []  # 8-GPU trials
    result = CliRunner().invoke(sweep, [str(path), "--dry-run", "--storage", "/tmp/unused", *cluster])
    assert result.exit_code == 0, result.output
    spec = load_spec(path)
    assert f"Cells: {len(spec.cells())}" in result.output
    assert f"Trials: {len(spec.cells()) * spec.trials_in_cell}" in result.output
    for name in spec.search:
        assert f"  {name}: " in result.output
    assert "Per trial:" in result.output and "MLflow:" in result.output


def test_a_trial_this_machine_can_never_place_is_refused_by_the_dry_run(tmp_path: Path):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({**TINY_STUDY, "resources": {"workers": 2, "cpus_per_worker": 64}}))
    result = CliRunner().invoke(sweep, [str(path), "--dry-run"])
    assert result.exit_code == 1 and "Cells: 4" in result.output  # the plan, then why it cannot run here
    assert "a trial needs 2 worker(s) of {CPU: 64}, but this machine has at most CPU" in result.output
    assert "lower resources.cpus_per_worker or resources.workers" in result.output
    gpus = tmp_path / "gpu.yaml"
    gpus.write_text(yaml.safe_dump({**TINY_STUDY, "resources": {"gpus_per_worker": 1}}))
    result = CliRunner().invoke(sweep, [str(gpus), "--dry-run"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.exit_code == 1 and "GPU 0 on one node" in result.output
    assert "resources.gpus_per_worker" in result.output and "--address" in result.output
    planned = CliRunner().invoke(sweep, [str(gpus), "--dry-run", "--cluster-gpus", "64"],
                                 env={"CUDA_VISIBLE_DEVICES": ""})
    assert planned.exit_code == 0 and "On 64 GPUs:" in planned.output  # a plan for a cluster, not refused


@pytest.mark.parametrize("name", ["it's", "a/b", "../x", ".hidden", "x" * 101])
def test_a_study_name_that_cannot_name_an_experiment_and_a_folder_is_refused(tmp_path: Path, name: str):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(TINY_STUDY))
    result = CliRunner().invoke(sweep, [str(path), "--dry-run", "--name", name])
    assert result.exit_code == 1 and f"--name {name!r}: a study name is" in result.output


def test_fusion_ablation_covers_every_distinct_fusion_decoder_objective_cell():
    spec = load_spec(REPO / "experiments/paper/fusion_ablation.yaml")
    assert spec.model.preset == "base" and spec.data.kind == "vggsound"
    assert len(spec.cells()) == 4 * 3 * 2 - 4  # decoder joint under inpainting = decoder shared
    assert {c["fusion"] for c in spec.cells()} == {"early", "late", "shared", "mid"}
    every = {(d, o) for d in ("separate", "shared", "joint") for o in ("joint", "inpainting")}
    assert {(c["decoder"], c["objective"]) for c in spec.cells()} == every - {("joint", "inpainting")}


def test_a_study_whose_axes_repeat_a_network_is_refused_naming_the_cells():
    raw = {**TINY_STUDY, "axes": {"decoder": ["shared", "joint"], "objective": ["joint", "inpainting"]}}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert str(err.value).count("\n") == 1  # one line
    assert ("cells decoder=shared,objective=inpainting and decoder=joint,objective=inpainting train the same "
            "network") in str(err.value)
    fixed = parse_spec({**raw, "exclude": [{"decoder": "joint", "objective": "inpainting"}]})
    assert len(fixed.cells()) == 3
    # Fields that cannot change the network count too: fusion_layers outside mid fusion.
    with pytest.raises(SpecError, match="fusion_layers=1,objective=joint and fusion_layers=2,objective="):
        parse_spec({**TINY_STUDY, "axes": {"objective": ["joint"], "fusion_layers": [1, 2]}})


@pytest.mark.parametrize(("exclude", "message"), [
    ([{"decoder": "joint"}], "matches no axis value"), ([{"fusion": "early"}, {"fusion": "mid"}], "no cell"),
])
def test_exclude_names_only_axis_values_and_leaves_a_cell(exclude: list, message: str):
    with pytest.raises(SpecError, match=message):
        parse_spec({**TINY_STUDY, "exclude": exclude})


def test_repeats_multiply_the_trials_and_pair_seeds_across_cells():
    spec = parse_spec({**TINY_STUDY, "repeats": 3, "train": {**TINY_STUDY["train"], "seed": 10}})
    assert spec.trials_in_cell == 3 * 3
    a = spec.resolve_trial({"fusion": "early", "objective": "joint", "lr": 1e-3, REPEAT_KEY: 2})
    b = spec.resolve_trial({"fusion": "mid", "objective": "inpainting", "lr": 5e-4, REPEAT_KEY: 2})
    assert (a.seed, a.repeat) == (b.seed, b.repeat) == (12, 2)
    assert a.cell == {"fusion": "early", "objective": "joint"} and a.sampled == {"lr": 1e-3}
    assert tune_config(spec, study_search(spec)).num_samples == 4 * 9  # 4 cells x 3 points x 3 seeds
    lr_grid = {"lr": {"dist": "grid", "values": [1e-3, 1e-2]}}
    grid = parse_spec({**TINY_STUDY, "repeats": 2, "search": lr_grid})
    cell_search = study_search(grid).searches["fusion=early,objective=joint"]
    points = [cell_search.suggest(str(i)) for i in range(12)]
    assert [(p["lr"], p[REPEAT_KEY]) for p in points[:4]] == [(1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)]
    assert len(points) == grid.trials_in_cell == 2 * 3 * 2


def test_rank_seeds_differ_by_rank_and_epoch_and_never_change():
    seeds = {(r, e): rank_seed(0, r, e) for r in range(4) for e in range(4)}
    assert len(set(seeds.values())) == 16 and all(0 <= s < 2**63 for s in seeds.values())
    assert rank_seed(0, 1, 2) == 8703209590962626244  # a hash of the text: the same in every process


def test_lr_stability_is_a_grid_around_1_6e_4_for_both_objectives():
    spec = load_spec(REPO / "experiments/paper/lr_stability.yaml")
    assert spec.axes == {"objective": ["joint", "inpainting"]}
    lr = spec.search["lr"]
    assert isinstance(lr, Grid) and 1.6e-4 in lr.values and min(lr.values) < 1.6e-4 < max(lr.values)
    assert not spec.searched_by_optuna and spec.scheduler.name == "fifo"


def test_quickstart_asks_whether_pretraining_learned_on_the_measured_recipe():
    """The quickstart's answer must be readable: it runs the recipe measured to beat a random-init encoder
    in its budget (docs/miniature.md), with seeds for intervals and the reference rows to read it against."""
    spec = load_spec(REPO / "experiments/quickstart.yaml")
    assert spec.data.kind == "av-digits" and spec.model.preset == "tiny"
    assert spec.data.av_digits.grey  # with a random hue per clip the tiny MAE learns colour, not the digit
    assert spec.model.overrides["norm_targets"] and spec.train.epochs >= 30
    assert spec.axes == {"objective": ["joint", "inpainting"]}
    assert spec.repeats >= 3 and spec.evaluation.baselines and spec.evaluation.pooling == "mean"
    assert spec.evaluation.probe == ["av", "audio", "video"] and spec.scheduler.name == "fifo"


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


def test_one_experiment_holds_every_cell_with_optuna_only_without_grid():
    from avmae.platform.study.cells import CellScheduler, GridPoints, search_space
    from avmae.platform.study.runner import study_search, tune_config
    from ray.tune.search.optuna import OptunaSearch

    spec = parse_spec(TINY_STUDY)
    assert isinstance(search_space(spec)["lr"], tune.search.sample.Float)
    search = study_search(spec)
    config = tune_config(spec, search)
    assert all(isinstance(s, OptunaSearch) for s in search.searches.values()) and len(search.searches) == 4
    assert config.num_samples == 4 * 3 and isinstance(config.scheduler, CellScheduler)
    assert config.metric == "train/loss" and config.mode == "min" and config.reuse_actors  # ASHA too

    grid = parse_spec(with_(search={"lr": {"dist": "grid", "values": [1e-4, 1e-3]}}, trials_per_cell=2))
    assert all(isinstance(s, GridPoints) for s in study_search(grid).searches.values())
    assert grid.trials_in_cell == 4
    fifo = parse_spec(with_(scheduler={"name": "fifo"}))
    fifo_config = tune_config(fifo, study_search(fifo))
    assert fifo_config.reuse_actors and type(fifo_config.scheduler).__name__ == "FIFOScheduler"


def test_reading_a_study_does_not_import_torch():
    """What `avmae sweep FILE --dry-run` does (validate every shipped study against the model's own checks,
    describe it) must not pay seconds for torch and timm."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "from avmae.platform.study.plan import describe\n"
        "from avmae.platform.study.prepare import absolute\n"
        "from avmae.platform.study.spec import load_spec\n"
        "for path in sorted(pathlib.Path('experiments').rglob('*.yaml')):\n"
        "    describe(absolute(load_spec(path)), '/tmp/studies', 'sqlite:///mlflow.db', None)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_each_av_digits_build_decodes_into_its_own_cache(tmp_path: Path):
    """AV-Digits is rebuilt in place when its settings change, with the same clip ids and labels: a cache per
    build (audio kind and settings) keeps a study from reading the old build's decoded clips."""
    from avmae.platform.study.prepare import absolute

    def cache(av_digits: dict, speech: Path | None = None) -> Path:
        data = {"kind": "av-digits", "root": str(tmp_path / "d"), "cache_dir": str(tmp_path / "c"),
                "av_digits": av_digits}
        return absolute(parse_spec({**TINY_STUDY, "data": data}), speech).data.cache_dir

    base = cache({"clips_per_digit": 4})
    assert base == cache({"clips_per_digit": 4}) and base.parent == tmp_path / "c"
    assert base.name.startswith("tones-")
    four = {"clips_per_digit": 4}
    others = {cache({**four, "grey": True}), cache({**four, "duration": 1.0}),
              cache(four, tmp_path / "speech"), cache(four, tmp_path / "s2")}
    assert len(others | {base}) == 5
