"""`avmae dashboard A B`: two studies with repeats, logged with the platform's tracking code to a real SQLite
store, compared cell by cell. Planted: the variant scores 0.1 higher in every joint cell, the same in every
inpainting cell, and runs one cell the base study does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from avmae.dashboards import stats
from avmae.dashboards.cli import dashboard
from avmae.dashboards.collect import collect_study
from avmae.dashboards.compare import build_comparison_dashboard, comparison_table, match_cells
from avmae.platform.tracking import layout as T
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from test_dashboards import (
    BASELINE_SCORES,
    FINISHED,
    REPEATED,
    REPEATS,
    Trial,
    offline_pages,
    traces,
    write_study,
)

SHIFT = 0.1
VARIANT = [dataclasses.replace(t, jitter=t.jitter + SHIFT) if t.objective == "joint" else t
           for t in REPEATED] + [Trial(f"late-{k}", "late", "shared", "joint", 1e-4, seed=k, repeat=k)
                                 for k in range(REPEATS)]
AXES = (("early", "joint"), ("mid", "joint"), ("late", "joint"), ("early", "inpainting"),
        ("shared", "inpainting"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    parent = write_study(client, "base", REPEATED, root)
    for k in range(REPEATS):
        T.log_metrics(client, parent, {T.baseline_metric(b, T.probe_metric("av", "acc")): v["av"][k]
                                       for b, v in BASELINE_SCORES.items()}, step=k)
    write_study(client, "variant", VARIANT, root)
    return uri


def best_scores(trials: list[Trial], cell: str) -> list[float]:
    """Planted AV scores of the repeats of a cell's best configuration (by mean)."""
    done = [t for t in trials if t.cell == cell and t.fate == FINISHED]
    if not done:
        return []
    lr = max({t.lr for t in done}, key=lambda lr: np.mean([t.score("av") for t in done if t.lr == lr]))
    return [t.score("av") for t in sorted(done, key=lambda t: t.repeat) if t.lr == lr]


def test_cells_are_matched_and_only_the_planted_differences_are_significant(store: str) -> None:
    client = MlflowClient(tracking_uri=store)
    datas = [collect_study(client, "base"), collect_study(client, "variant")]
    metric, matches = match_cells(datas)
    assert metric == T.probe_metric("av", "acc")
    assert [m.cell for m in matches] == [T.cell_key({"fusion": f, "decoder": "shared", "objective": o})
                                         for f, o in AXES]
    for m in matches:
        base, variant = best_scores(REPEATED, m.cell), best_scores(VARIANT, m.cell)
        assert m.scores["variant"].mean == pytest.approx(np.mean(variant))
        assert m.scores["variant"].n == REPEATS
        difference = m.differences["variant"]
        if not base:  # late fusion: only the variant ran it
            assert m.scores["base"].n == 0 and difference.test == "none"
            continue
        expected = stats.welch_difference(variant, base)
        assert (difference.diff.mean, difference.p) == pytest.approx((expected.diff.mean, expected.p))
        joint = "objective=joint" in m.cell
        assert difference.significant() == joint  # Holm over the 4 tested cells
        assert difference.diff.mean == pytest.approx(SHIFT if joint else 0.0)
    figure = comparison_table(datas, metric, matches)
    assert "Holm over the page's 4 tested comparisons" in figure.layout.title.text
    table = traces(figure, "comparison")[0]
    columns = dict(zip(table.header.values, table.cells.values, strict=True))
    cells = [f"{f} · shared · {o}" for f, o in AXES]
    assert list(columns["fusion · decoder · objective"]) == cells + ["baseline: random-init encoder",
                                                                     "baseline: raw input"]
    assert columns[f"base: {metric}"][2] == "not run"
    random_init = stats.mean_ci(BASELINE_SCORES["random_init"]["av"])
    assert columns[f"base: {metric}"][5] == f"{random_init.text()} (n = 3)"
    assert columns[f"variant: {metric}"][5] == "not logged"  # the variant logged no reference rows
    differences = list(columns["variant − base"])
    assert differences[0].startswith("★ +0.100 [") and differences[1].startswith("★ +0.100 [")
    assert differences[2] == "—" and not differences[3].startswith("★")


def test_cli_builds_the_comparison_page_and_names_a_missing_study(store: str, tmp_path: Path) -> None:
    out = tmp_path / "c.html"
    result = CliRunner().invoke(dashboard, ["base", "variant", "--tracking-uri", store, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "dashboard for base vs variant" in result.output
    page = out.read_text()
    assert page.count("plotly.js v") == 1 and "<script src" not in page
    assert all(f'id="fig-{name}"' in page for name in ("side_by_side", "comparison", "stability"))
    missing = CliRunner().invoke(dashboard, ["base", "nope", "--tracking-uri", store])
    assert missing.exit_code == 1 and "no study 'nope'" in missing.output
    assert "available studies: base, variant" in missing.output
    assert "Traceback" not in missing.output


@pytest.mark.browser
def test_comparison_page_renders_offline_in_headless_chromium(store: str, tmp_path: Path) -> None:
    page_path = build_comparison_dashboard(["base", "variant"], store, out=tmp_path / "compare.html")
    with offline_pages(tmp_path) as (new_page, attempted, errors):
        page = new_page()
        page.goto(page_path.resolve().as_uri())
        page.wait_for_function("['side_by_side', 'comparison', 'stability'].every("
                               "n => document.querySelector(`#fig-${n} .main-svg`))", timeout=60_000)
        text = page.eval_on_selector("body", "e => e.textContent")
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    assert attempted == [] and errors == []
    assert "base vs variant" in text and "★ +0.100 [" in text and "not run" in text
    assert "joint reconstruction: stable over 1e-4 to 1.6e-3" in text
    assert "baseline: random-init encoder" in text
    print(f"screenshot: {tmp_path / 'compare.png'}")
