"""Mistakes a user can make get one clear message naming the field or file and the fix."""

import os
import subprocess
import sys

import pytest

from bridgegap_jax import train
from bridgegap_jax.datasets import catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "bridgegap_jax.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_unknown_config_field_is_an_error(tmp_path):
    done = run_main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.batchsize=8")
    assert done.returncode != 0
    assert "batchsize" in done.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def test_missing_dataset_names_the_folder_and_the_prepare_command(tmp_path):
    missing = tmp_path / "no_data_here"
    done = run_main("--config=configs/openimages.py", f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={missing}")
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert str(missing / "bridgegap_openimages") in message
    assert "python -m bridgegap_jax.datasets.prepare openimages" in message
    assert "Traceback" not in done.stderr


def test_missing_pretrained_weights_name_the_conversion_command(tmp_path, demo_data_dir):
    missing = tmp_path / "no_weights"
    done = run_main("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={demo_data_dir}",
                    f"--config.model.pretrained={missing}")
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert str(missing) in message and "python -m bridgegap_jax.pretrained --source=" in message
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # rerunning with the weights in place must work


def test_label_vectors_of_the_wrong_width_are_an_error(demo_data_dir):
    builder = catalog.load_builder("demo", demo_data_dir)
    with pytest.raises(ValueError, match=r"feature 'labels' has shape \(10,\), expected \(20,\)"):
        catalog.check_label_shapes(builder, "voc", 20)


@pytest.mark.parametrize(
    "field,value,match",
    [("loss.scheme", "LL-X", "loss.scheme"), ("model.dtype", "float16", "model.dtype"), ("data.train_labels", "some", "data.train_labels")],
)
def test_bad_field_values_are_errors(tiny_config, tmp_path, field, value, match):
    section, name = field.split(".")
    tiny_config[section][name] = value
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(tiny_config, str(tmp_path))
    assert not (tmp_path / train.CONFIG_FILE).exists()  # fixing the field and rerunning must work
