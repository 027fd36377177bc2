"""scripts/study.py: the fine-tuning grids list their runs, and the command that makes a missing trunk first."""

import os

from helpers import run


def test_the_fine_tuning_grids_list_their_runs_without_a_trunk(tmp_path):
    done = run(
        "scripts/study.py", "finetune_batch", "--list", "--seeds=0", env={**os.environ, "HOME": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[1:]  # after the command that makes the trunk
    assert len(lines) == 2 + 3 * 9 and all(
        "--config=configs/demo_large_finetune.py" in line for line in lines
    )
    lamb = next(line for line in lines if "b2048-lamb" in line)
    assert "--config.train.optimizer=lamb" in lamb and "--config.train.lr_scaling=sqrt" in lamb


def test_a_fine_tuning_grid_without_its_trunk_makes_it_first(tmp_path):
    home = {**os.environ, "HOME": str(tmp_path)}  # no ~/bridgegap_weights there
    listed = run("scripts/study.py", "finetune", "--list", "--seeds=0", "--config.data.data_dir=/d", env=home)
    assert listed.returncode == 0, listed.stderr
    first = listed.stdout.splitlines()[0]
    weights = os.path.join(str(tmp_path), "bridgegap_weights")
    assert first.startswith(
        f"python scripts/letters_trunk.py --width=16 --weights={weights} --config.data.data_dir=/d"
    )
    scratch = run("scripts/study.py", "finetune", "--only=an-scratch", "--list", env=home)
    assert "letters_trunk" not in scratch.stdout  # no entry of it needs the trunk
    assert "--config.model.pretrained= " in scratch.stdout and "--config.train.lr=0.001" in scratch.stdout


def test_a_given_trunk_is_the_one_the_study_uses_and_makes(tmp_path):
    home = {**os.environ, "HOME": str(tmp_path)}  # the config's ~/bridgegap_weights is missing
    trunk = tmp_path / "mine" / "letters_resnet18_w8"
    flag = f"--config.model.pretrained={trunk}"
    listed = run("scripts/study.py", "finetune_batch", "--list", "--seeds=0", flag, env=home)
    assert listed.returncode == 0, listed.stderr
    first, *lines = listed.stdout.splitlines()  # the missing trunk is made where it was given
    assert first.startswith(f"python scripts/letters_trunk.py --width=8 --weights={tmp_path / 'mine'}")
    assert len(lines) == 2 + 3 * 9 and all(line.endswith(flag) for line in lines)

    (trunk / "variables").mkdir(parents=True)  # there now: nothing to make
    listed = run("scripts/study.py", "finetune_batch", "--list", "--seeds=0", flag, env=home)
    assert listed.returncode == 0 and "letters_trunk" not in listed.stdout, listed.stderr

    elsewhere = f"--config.model.pretrained={tmp_path / 'resnet18'}"  # missing, and not a letters trunk
    refused = run("scripts/study.py", "finetune_batch", "--list", elsewhere, env=home)
    assert refused.returncode == 2 and f"{elsewhere}: no converted trunk there" in refused.stderr

    scratch = run("scripts/study.py", "finetune", "--only=an-scratch", "--list", flag, env=home)
    assert "--config.model.pretrained= " in scratch.stdout and flag not in scratch.stdout  # its own ''


def test_the_steps_to_target_study_trains_batch_16_first_then_the_largest_batches(tmp_path):
    listed = run("scripts/study.py", "steps_to_target", "--list", env={**os.environ, "HOME": str(tmp_path)})
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if "bridgegap_jax.main" in line]
    batches = [int(line.split("--config.train.batch_size=")[1].split()[0]) for line in lines]
    assert batches[:5] == [16, 4096, 1024, 256, 64] and sorted(set(batches)) == [16, 64, 256, 1024, 4096]
    assert all("--config=configs/demo_xl.py" in line and "_s0 " in line for line in lines)
    assert "--config.train.validate_every_steps=128" in lines[0] and "optimizer" not in lines[0]
    large = lines[1]  # LARS x1,000 with sqrt scaling, a warm-up of the first eighth, cosine, groups of 16
    for flag in ("optimizer=lars", "lr=0.3", "lr_scaling=sqrt", "warmup_epochs=1.0", "lr_decay=cosine"):
        assert f"--config.train.{flag}" in large
    assert "--config.model.bn_group_size=16" in large and "--config.train.validate_every_steps=1 " in large
