"""The CAM analysis tool: extraction, the numbers, the figures, and its errors, on tiny fake runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import make_run, png_size, random_variables

from bridgegap_jax.base import sharding
from bridgegap_jax.explain import cam_figures, cam_maps, cam_stats
from bridgegap_jax.explain import cli as explain
from bridgegap_jax.model.resnet import CAMClassifier
from bridgegap_jax.prepare import demo
from bridgegap_jax.run import trained_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trained_alpha", [1.0, 5.0])
@pytest.mark.slow
def test_cam_extraction_equals_the_models_logits(trained_alpha):
    model = CAMClassifier(num_classes=10, depth=18, width=8, alpha=trained_alpha)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
    variables = random_variables(model)
    class_ids = np.array([[3, 0], [9, 9], [1, 4], [2, 7]], np.int32)
    mesh = sharding.make_mesh()

    alphas = (trained_alpha, 5.0, 1.0)
    maps, probs = cam_maps.cam_fn(model, alphas, mesh)(variables, images, class_ids)
    assert maps.shape == (3, 4, 1, 1, 2)  # 32 / 32: a 1x1 CAM grid
    all_logits = jax.jit(lambda v, x: [model.clone(alpha=alpha).apply(v, x)[0] for alpha in alphas])(
        variables, images
    )
    for a, logits in enumerate(all_logits):
        expected = np.take_along_axis(np.asarray(logits), class_ids, axis=1)
        np.testing.assert_allclose(np.mean(maps[a], axis=(1, 2)), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs[a], jax.nn.sigmoid(expected), rtol=1e-5, atol=1e-6)

    # Upsampling happens after the gather: same maps, only bigger.
    up, up_probs = cam_maps.cam_fn(model, alphas, mesh, upsample_to=32)(variables, images, class_ids)
    assert up.shape == (3, 4, 32, 32, 2)
    np.testing.assert_allclose(up[:, :, 5, 7], maps[:, :, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(up_probs, probs)


def test_cam_extraction_on_a_grid_boosts_only_positive_cells():
    model = CAMClassifier(num_classes=10, depth=18, width=8, alpha=1.0)
    images = np.random.default_rng(2).integers(0, 256, (2, 128, 128, 3), np.uint8)
    variables = random_variables(model, image_size=128)
    class_ids = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    maps, _ = cam_maps.cam_fn(model, (1.0, 5.0), sharding.make_mesh())(variables, images, class_ids)
    (logits, cam), (boosted_logits, _) = jax.jit(
        lambda v, x: (model.apply(v, x), model.clone(alpha=5.0).apply(v, x))
    )(variables, images)
    raw = np.take_along_axis(np.asarray(cam), class_ids[:, None, None, :], axis=-1)
    np.testing.assert_allclose(maps[0], raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[1], np.where(raw > 0, 5 * raw, raw), rtol=1e-5, atol=1e-6)
    for m, model_logits in zip(maps, (logits, boosted_logits)):
        expected = np.take_along_axis(np.asarray(model_logits), class_ids, 1)
        np.testing.assert_allclose(m.mean(axis=(1, 2)), expected, rtol=1e-5, atol=1e-5)


def test_positive_class_ids_pads_to_a_power_of_two():
    labels = np.array([[0, 1, 1, 1, 0], [1, 0, 0, 0, 0], [-1, 0, 1, 0, 1], [1, 1, 1, 1, 1]], np.int8)
    mask = np.array([True, True, True, False])  # the last row is padding
    ids, valid = cam_maps.positive_class_ids(labels, mask)
    assert ids.shape == (4, 4)
    assert [list(i[v]) for i, v in zip(ids, valid)] == [[1, 2, 3], [0], [2, 4], []]


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------
def test_slope_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 2, (4000, 9))
    model = np.where(reference > 0, 0.3 * reference, 0.9 * reference) + rng.normal(0, 0.05, reference.shape)
    stats = cam_stats.compare(reference, model, top_k_percent=20)
    assert stats["slope_positive_cells"] == pytest.approx(0.3, abs=0.01)
    assert stats["slope_negative_cells"] == pytest.approx(0.9, abs=0.01)
    assert stats["median_ratio_positive_cells"] == pytest.approx(0.3, abs=0.01)
    assert stats["median_ratio_negative_cells"] == pytest.approx(0.9, abs=0.01)
    assert stats["pearson_mean"] > 0.95
    assert stats["num_positive_cells"] + stats["num_negative_cells"] == reference.size


def test_region_similarity():
    a = np.array([[1.0, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    np.testing.assert_allclose(cam_stats.pearson_per_pair(a, 3 * a - 1), [1, 1])
    np.testing.assert_allclose(cam_stats.pearson_per_pair(a, a[::-1]), [-1, -1])
    assert np.isnan(cam_stats.pearson_per_pair(a, np.ones_like(a))).all()  # a constant map: undefined
    # top 40% of 5 cells = 2 cells: {4, 5} vs {3, 4} share 1 of 3.
    b = np.array([[1.0, 2, 5, 4, 3], [5, 4, 3, 2, 1]])
    np.testing.assert_allclose(cam_stats.top_k_iou_per_pair(a, b, 40), [1 / 3, 1])


# ----------------------------------------------------------------------------------------------
# The tool, end to end on the demo test split
# ----------------------------------------------------------------------------------------------
def test_explain_writes_figures_and_summary(tiny_config, tmp_path):
    runs = []
    for seed, (name, alpha) in enumerate([("full", 1.0), ("an", 1.0), ("boost", 5.0)]):
        config = tiny_config.copy_and_resolve_references()
        config.model.alpha = alpha
        runs.append((name, make_run(tmp_path / name, config, seed=seed)))
    out = tmp_path / "out"
    summary = explain.explain(runs, str(out), classes=["three", "seven"], num_rows=3, rows_per_figure=2)

    columns = ["full", "an", "an + BoostLU at inference", "boost"]
    assert list(summary["models"]) == columns
    assert summary["num_positive_pairs"] == int(demo.make_mosaics("test")["labels"].sum())
    assert summary["num_images"] == 480 and summary["cam_grid"] == [1, 1]
    assert "vs_reference" not in summary["models"]["full"]
    an, boosted = summary["models"]["an"], summary["models"]["an + BoostLU at inference"]
    assert boosted["alpha"] == 5.0 and boosted["run"] == "an"
    # Same raw CAM: its positive cells exactly 5x, the ranking of cells (top-k regions) unchanged.
    assert boosted["mean_positive_cell_attribution"] == pytest.approx(
        5 * an["mean_positive_cell_attribution"], rel=1e-5
    )
    assert boosted["vs_reference"]["top20_iou_mean"] == an["vs_reference"]["top20_iou_mean"]
    assert boosted["mean_probability"] >= an["mean_probability"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))

    files = [figure["file"] for figure in summary["figures"]]
    assert files == ["cams_1.png", "cams_2.png"]
    rows = [row for figure in summary["figures"] for row in figure["rows"]]
    assert len(rows) == 3 and {row["class"] for row in rows} <= {"three", "seven"}
    assert png_size(out / "cams_1.png") == cam_figures.figure_size_px(2, len(columns))
    assert png_size(out / "cams_2.png") == cam_figures.figure_size_px(1, len(columns))
    for name in ("scatter.png", "ratios.png"):
        png_size(out / name)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def test_a_missing_workdir_names_it_and_the_command_that_makes_it(tmp_path, tiny_config):
    present = make_run(tmp_path / "present", tiny_config)
    missing = str(tmp_path / "missing")
    with pytest.raises(
        trained_run.RunNotFoundError, match=f"workdir {missing} does not exist.*python -m bridgegap_jax.main"
    ):
        explain.explain([("full", present), ("an", missing)], str(tmp_path / "out"))


def test_a_missing_checkpoint_names_the_folder_and_the_command(tmp_path, tiny_config):
    present = make_run(tmp_path / "present", tiny_config)
    untrained = make_run(tmp_path / "untrained", tiny_config, checkpoint=False)
    best = os.path.join(untrained, "checkpoints", "best")
    with pytest.raises(
        trained_run.RunNotFoundError,
        match=f"no best checkpoint in {best}.*--config=configs/demo.py --workdir={untrained}",
    ):
        explain.explain([("full", present), ("an", untrained)], str(tmp_path / "out"))


def test_a_checkpoint_of_the_wrong_class_count_names_both_numbers(tmp_path, tiny_config):
    good = make_run(tmp_path / "good", tiny_config)
    wrong = make_run(tmp_path / "wrong", tiny_config, num_classes=7)
    with pytest.raises(
        explain.ExplainError, match="run 'an' .* has a 7-class checkpoint, but dataset 'demo' has 10 classes"
    ):
        explain.explain([("full", good), ("an", wrong)], str(tmp_path / "out"))


def test_an_unknown_class_name_lists_the_classes(tmp_path, tiny_config):
    runs = [("full", make_run(tmp_path / "a", tiny_config)), ("an", make_run(tmp_path / "b", tiny_config))]
    with pytest.raises(explain.ExplainError, match="class 'eleven' not found; classes are: zero, one"):
        explain.explain(runs, str(tmp_path / "out"), classes=["eleven"])
    with pytest.raises(explain.ExplainError, match="--reference 'ful' is not one of the runs"):
        explain.explain(runs, str(tmp_path / "out"), reference="ful")


def test_bad_run_flags():
    with pytest.raises(explain.ExplainError, match="not NAME=WORKDIR"):
        explain.parse_runs(["runs/a", "b=runs/b"])
    with pytest.raises(explain.ExplainError, match="at least two runs"):
        explain.parse_runs(["a=runs/a"])


def test_command_line_error_is_one_clear_line(tmp_path):
    missing = str(tmp_path / "nothing")
    done = subprocess.run(  # --out is optional
        [sys.executable, "-m", "bridgegap_jax.explain", f"--run=full={missing}", f"--run=an={missing}"],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"workdir {missing} does not exist" in done.stderr.strip().splitlines()[-1]


def test_the_default_out_is_a_new_folder_that_git_ignores():
    out = explain.default_out()
    assert os.path.dirname(out) == "explain" and not os.path.exists(os.path.join(ROOT, out))
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "/explain/" in f.read().split()


def test_relative_workdirs_are_read(tmp_path, tiny_config, monkeypatch):
    make_run(tmp_path / "a", tiny_config)
    monkeypatch.chdir(tmp_path)  # the README's commands name runs/demo, not an absolute path
    assert trained_run.open_run("a", "full").num_classes == 10
