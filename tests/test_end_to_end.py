"""The runtime end to end as a user runs it, in subprocesses where importing TensorFlow fails:
the demo (main builds it), and a fake OpenImages download -> prepare -> main."""

import json
import os
import subprocess
import sys

import pytest
from helpers import demo_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.depth=18",
    "--config.model.width=8",
    "--config.data.image_size=32",
    "--config.train.num_epochs=1",
]


def blocked_tensorflow(tmp_path) -> dict:
    """An environment in which `import tensorflow` raises, in every process (grain's workers too)."""
    fake = tmp_path / "no_tensorflow" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow is blocked in this test')\n")
    path = os.pathsep.join([str(fake.parent), ROOT, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path)


def run(env, *args):
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_blocker_blocks(tmp_path):
    env = blocked_tensorflow(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "TensorFlow is blocked" in done.stderr


@pytest.mark.slow
def test_demo_trains_without_tensorflow_and_prints_only_its_own_lines(tmp_path, demo_data_dir):
    from test_console import check_run

    env = blocked_tensorflow(tmp_path)
    done = run(
        env,
        "bridgegap_jax.main",
        *demo_flags(tmp_path / "run", demo_data_dir, train__num_epochs=1, data__workers=2),
    )
    check_run(done)  # stderr empty: no progress bars, banners or warnings, also from the grain workers
    assert json.loads((tmp_path / "run" / "result.json").read_text())["num_test_examples"] == 480


@pytest.mark.slow
def test_fake_openimages_trains_and_reports_observed_only_groups(tmp_path):
    env = blocked_tensorflow(tmp_path)
    run(env, "bridgegap_jax.prepare.fake", "openimages", f"--out={tmp_path / 'download'}")
    run(
        env,
        "bridgegap_jax.prepare",
        "openimages",
        f"--source={tmp_path / 'download'}",
        f"--data_dir={tmp_path / 'data'}",
    )
    workdir = tmp_path / "run"
    out = run(
        env,
        "bridgegap_jax.main",
        "--config=configs/openimages.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.model.pretrained=",
        *TINY,
    ).stdout
    assert "group5" in out.splitlines()[-1] and "test mAP" in out.splitlines()[-1]
    result = json.loads((workdir / "result.json").read_text())
    assert sorted(result["test_groups"]) == [f"group{g}" for g in range(1, 6)]
    assert result["num_test_examples"] == 10  # 12 listed in the CSVs, one missing and one corrupt
    assert 0 <= result["test_map"] <= result["test_map_with_positives"] <= 100
    with open(workdir / "test_class_ap.tsv") as f:
        assert len(f.read().splitlines()) == 1 + 5000
    # The runs table of this result, as the trainer wrote it: a column per frequency group.
    from test_report import parse

    header, rows, _ = parse(run(env, "bridgegap_jax.report", str(workdir)).stdout)
    assert header[header.index("test mAP") + 1 :][:5] == [f"group{g}" for g in range(1, 6)]
    for name, group in result["test_groups"].items():
        assert rows[0][name] == ("" if group["map"] is None else f"{group['map']:.2f}")
