"""scripts/study.py: the fine-tuning grids list their runs, and stop at once without their trunk."""

import os

from helpers import one_line_error, run


def test_the_fine_tuning_grids_list_their_runs_without_a_trunk(tmp_path):
    done = run(
        "scripts/study.py", "finetune_batch", "--list", "--seeds=0", env={**os.environ, "HOME": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 + 3 * 9 and all(
        "--config=configs/demo_large_finetune.py" in line for line in lines
    )
    lamb = next(line for line in lines if "b2048-lamb" in line)
    assert "--config.train.optimizer=lamb" in lamb and "--config.train.lr_scaling=sqrt" in lamb


def test_a_fine_tuning_grid_without_its_trunk_stops_naming_the_command(tmp_path):
    home = {**os.environ, "HOME": str(tmp_path)}  # no ~/bridgegap_weights there
    runs = tmp_path / "runs"
    message = one_line_error(run("scripts/study.py", "finetune", f"--runs={runs}", env=home))
    assert "~/bridgegap_weights/letters_resnet18_w16" in message
    assert "python -m bridgegap_jax.main --config=configs/letters.py --config.model.width=16" in message
    assert not runs.exists()  # nothing trained
    scratch = run("scripts/study.py", "finetune", "--only=an-scratch", "--list", env=home)
    assert "--config.model.pretrained= " in scratch.stdout and "--config.train.lr=0.001" in scratch.stdout
