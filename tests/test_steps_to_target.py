"""scripts/steps_to_target.py and `study.py steps_to_target --table`: steps to batch 16's target read
from fake runs' metrics.jsonl, the table, and the plot (no training)."""

import importlib.util
import json
import os
import sys

from helpers import ROOT, png_size, run

from bridgegap_jax.run import rundir


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


curve = load_script("steps_to_target")


def fake_run(
    workdir, overrides: dict, validations: list, test_map=None, kind="step_validation", selected=None
):
    """A run of configs/demo_xl.py with `overrides`, its `validations` [(step, mAP)] recorded as
    `kind` between training records, and a result when `test_map` is given (its best epoch's validation
    mAP: `selected`, else the last validation's)."""
    from configs import demo_xl

    config = demo_xl.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    os.makedirs(workdir)
    with open(os.path.join(workdir, rundir.CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort())
    with open(os.path.join(workdir, rundir.METRICS_FILE), "w") as f:
        for step, value in validations:
            f.write(json.dumps({"kind": "train", "step": step, "loss": 0.1}) + "\n")
            f.write(json.dumps({"kind": kind, "step": step, "epoch": 1, "map": value, "loss": 0.1}) + "\n")
    if test_map is not None:
        with open(os.path.join(workdir, rundir.RESULT_FILE), "w") as f:
            json.dump({"test_map": test_map, "best_val_map": selected or validations[-1][1]}, f)
    return str(workdir)


LARS = {"train.optimizer": "lars", "train.lr": 0.3, "train.lr_scaling": "sqrt", "train.warmup_epochs": 1.0}
# batch 16 (8,192 steps): best 94.0, so the target is 93.0, first reached at step 3,072
B16 = [(128 * i, 80.0 + 14.0 * min(1.0, i / 32)) for i in range(1, 65)]
B16[23] = (B16[23][0], 93.5)  # a validation above the target before the first one of the rising curve
B16[40] = (B16[40][0], 94.5)  # a noisy high one: the target comes from the best epoch's (94.0)
B4096 = [(i, min(95.0, 50.0 + i)) for i in range(1, 129)]  # 93.0 at step 43
B1024 = [(2 * i, min(90.0, 40.0 + i)) for i in range(1, 129)]  # a plateau at 90
B256 = [(8 * i, 60.0 + 0.1 * i) for i in range(1, 97)]  # 69.6 and still rising


def fake_study(root) -> dict:
    """{workdir: name} of five runs: finished at 16, 4,096, 1,024 and 256, unfinished at 64."""
    runs = {
        "b16": ({"train.batch_size": 16}, B16, 95.1, 94.0),
        "b4096": ({"train.batch_size": 4096, "train.num_epochs": 8, **LARS}, B4096, 94.4, None),
        "b1024": ({"train.batch_size": 1024, "train.num_epochs": 4, **LARS}, B1024, 91.0, None),
        "b256": ({"train.batch_size": 256, "train.num_epochs": 3, **LARS}, B256, 70.0, None),
        "b64": ({"train.batch_size": 64}, [(32, 70.0), (64, 75.5)], None, None),
    }
    return {
        fake_run(os.path.join(root, name), overrides, validations, test_map, selected=selected): name
        for name, (overrides, validations, test_map, selected) in runs.items()
    }


def test_the_steps_to_target_are_those_of_the_first_validation_at_or_above_it(tmp_path):
    runs = [curve.read_run(workdir, name) for workdir, name in fake_study(str(tmp_path)).items()]
    b16, b4096, _, _, b64 = runs
    target = curve.target_of(b16)
    assert target == 93.0 and b16.best_val_map == 94.5 and b16.budget_steps == 8192
    assert [run.steps_to(target) for run in runs] == [24 * 128, 43, None, None, None]
    assert [run.steps_to(target, 3) for run in runs] == [31 * 128, 44, None, None, None]  # means of 3
    assert b4096.budget_steps == 128 and b4096.peak_lr == 0.3 * 16 and b4096.test_map == 94.4
    assert curve.target_of(b64) is None  # unfinished: no target from it
    epoch_ends = fake_run(str(tmp_path / "epochs"), {}, [(4096, 93.2), (8192, 94.1)], kind="validation")
    assert curve.read_run(epoch_ends, "epochs").steps_to(93.0) == 4096  # the epochs' validations count too

    lines = {line.split(" | ")[1]: line for line in curve.table(runs, target).splitlines()[2:]}
    assert (
        lines["b16"].startswith("| 16* | b16 | adam |")
        and "| 3,072 | 3,968 | 94.50 | 95.10 | 1.0x (1.0x) | 1x |" in lines["b16"]
    )
    assert (
        "| lars, sqrt scaling, warm-up 1 ep | 0.3 (4.8) | 8 ep, 128 steps | 43 | 44 | 95.00" in lines["b4096"]
    )
    assert lines["b4096"].endswith("| 94.40 | 71.4x (90.2x) | 256x |")
    assert "| not reached (plateau 90.00) |  | 90.00 | 91.00 |  | 64x |" in lines["b1024"]
    assert "| not reached (69.60, +2.40 in the last quarter: more steps) |" in lines["b256"]
    assert "| not yet (75.50 by step 64) |  | 75.50 |  |  | 4x |" in lines["b64"]


def test_the_command_prints_the_curve_and_draws_it(tmp_path):
    study = load_script("study")
    names = list(study.steps_grid())  # the grid's first run (batch 16) fixes the target
    runs = tmp_path / "runs"
    fake_run(str(runs / f"{names[0]}_s0"), study.steps_grid()[names[0]], B16, 95.1, selected=94.0)
    fake_run(str(runs / f"{names[1]}_s0"), study.steps_grid()[names[1]], B4096, 94.4)
    plot = tmp_path / "docs" / "curve.png"
    done = run(
        "scripts/study.py",
        "steps_to_target",
        "--table",
        f"--runs={runs}",
        f"--plot={plot}",
        "--noise_scale=300",
    )
    assert done.returncode == 0, done.stderr
    assert f"target: validation mAP >= 93.00 ({names[0]}_s0's best epoch, 94.00, minus 1)" in done.stdout
    assert f"| 4096* | {names[1]}_s0 |" in done.stdout and "| 71.4x (90.2x) | 256x |" in done.stdout
    assert "python scripts/study.py steps_to_target" in done.stdout and f"plot: {plot}" in done.stdout
    assert png_size(plot)[0] > 300
    only = run("scripts/study.py", "steps_to_target", "--table", f"--runs={runs}", f"--only={names[1]}")
    assert "target: validation mAP >= 93.00" in only.stdout and f"| {names[0]}_s0 |" not in only.stdout
    empty = run("scripts/study.py", "steps_to_target", "--table", f"--runs={tmp_path / 'none'}")
    assert empty.returncode == 0 and "none yet" in empty.stdout, empty.stderr
