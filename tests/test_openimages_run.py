"""The OpenImages path end to end, as a user runs it: fake download -> prepare -> main."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_fake_openimages_trains_and_reports_observed_only_groups(tmp_path):
    run("bridgegap_jax.datasets.fake", "openimages", f"--out={tmp_path / 'download'}")
    run("bridgegap_jax.datasets.prepare", "openimages", f"--source={tmp_path / 'download'}", f"--data_dir={tmp_path / 'data'}")
    workdir = tmp_path / "run"
    out = run(
        "bridgegap_jax.main", "--config=configs/openimages.py", f"--workdir={workdir}",
        f"--config.data.data_dir={tmp_path / 'data'}", "--config.model.pretrained=", "--config.model.depth=18",
        "--config.model.width=8", "--config.data.image_size=32", "--config.train.num_epochs=1",
    )
    assert "group5" in out.splitlines()[-1]
    with open(workdir / "result.json") as f:
        result = json.load(f)
    assert sorted(result["test_groups"]) == [f"group{g}" for g in range(1, 6)]
    assert result["num_test_examples"] == 10  # 12 listed in the CSVs, one missing and one corrupt
    assert 0 <= result["test_map"] <= result["test_map_with_positives"] <= 100
    with open(workdir / "test_class_ap.tsv") as f:
        assert len(f.read().splitlines()) == 1 + 5000
