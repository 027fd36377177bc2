"""Mistakes a user can make get one clear message naming the field or file and the fix."""

import os
import shutil
import subprocess
import sys

import pytest

from bridgegap_jax.data import catalog
from bridgegap_jax.run import configuration, rundir, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "bridgegap_jax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(done) -> str:
    """The run's error: exit code 2, no traceback, one line on stderr."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


def test_unknown_config_field_is_one_line_with_a_suggestion(tmp_path):
    message = one_line_error(
        run_main("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", "--config.train.batchsize=8")
    )
    assert message.endswith(
        'field that does not exist: \'batchsize\'. Did you mean "batch_size" instead of "batchsize"? '
        "(docs/running.md)"
    )
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize(
    "flag,expected",
    [
        ("--workdir=", "error: --workdir must name the run's folder, e.g. --workdir=runs/demo"),
        (
            "--config.train.lr=abc",
            "error: flag --config.train.lr=abc: could not convert string to float: 'abc'",
        ),
        (
            "--config=configs/nope.py",
            f"error: --config=configs/nope.py: no such file (a relative path starts at the current directory, "
            f"{ROOT}); name a file of the repository's configs/",
        ),
        (
            "--config=configs/demo.py:huge",
            "error: --config=configs/demo.py:huge: no variant 'huge': use --config=configs/demo.py or "
            "--config=configs/demo.py:tiny",
        ),
        (
            "--config=configs/coco.py:tiny",
            "error: --config=configs/coco.py:tiny: this config file takes no ':VARIANT'",
        ),
    ],
)
def test_a_flag_mistake_is_one_line_and_writes_nothing(tmp_path, flag, expected):
    """An empty --workdir used to train in the current directory (here: the repository's root)."""
    before = sorted(os.listdir(ROOT))
    message = one_line_error(run_main("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", flag))
    assert message.startswith(expected)
    assert sorted(os.listdir(ROOT)) == before and not (tmp_path / "run").exists()


def test_missing_dataset_names_the_folder_and_the_prepare_command(tmp_path):
    missing = tmp_path / "no_data_here"
    message = one_line_error(
        run_main(
            "--config=configs/openimages.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={missing}",
        )
    )
    assert str(missing / "bridgegap_openimages") in message
    assert "python -m bridgegap_jax.prepare openimages" in message
    assert not (tmp_path / "run").exists()


def test_missing_pretrained_weights_name_the_conversion_command(tmp_path, demo_data_dir):
    missing = tmp_path / "no_weights"
    message = one_line_error(
        run_main(
            "--config=configs/demo.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={demo_data_dir}",
            f"--config.model.pretrained={missing}",
        )
    )
    assert str(missing) in message and "python -m bridgegap_jax.model.pretrained --source=" in message
    assert "--config.model.pretrained=''" in message  # or train from scratch
    assert not (tmp_path / "run").exists()  # rerunning with the weights in place must work


def test_label_vectors_of_the_wrong_width_are_an_error(demo_data_dir, tmp_path):
    shutil.copytree(os.path.join(demo_data_dir, "bridgegap_demo"), tmp_path / "bridgegap_voc")
    with pytest.raises(ValueError, match=r"feature 'labels' has shape \(10,\), expected \(20,\)"):
        catalog.open_dataset("voc", str(tmp_path))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("loss.scheme", "LL-X", "loss.scheme"),
        ("model.dtype", "float16", "model.dtype"),
        ("data.train_labels", "some", "data.train_labels"),
    ],
)
def test_bad_field_values_are_errors(tiny_config, tmp_path, field, value, match):
    section, name = field.split(".")
    tiny_config[section][name] = value
    with pytest.raises(configuration.ConfigError, match=match):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # fixing the field and rerunning must work
    assert not os.path.exists(tmp_path / "run" / rundir.CONFIG_FILE)
