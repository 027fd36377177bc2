"""The runs table: differing config fields, scores, status, seed groups and errors, on fake workdirs."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from bridgegap_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {
    "seed": 0,
    "data": {"name": "demo", "image_size": 32},
    "model": {"alpha": 5.0, "pretrained": ""},
    "loss": {"scheme": "LL-R"},
    "train": {"num_epochs": 10},
}


def config(**dotted):
    """CONFIG with some fields changed: config(**{'model.alpha': 1.0})."""
    changed = copy.deepcopy(CONFIG)
    for name, value in dotted.items():
        *sections, key = name.split(".")
        node = changed
        for section in sections:
            node = node[section]
        node[key] = value
    return changed


def result(test_map, val_map=50.0, best_epoch=7, wall_time_s=3725.4, groups=None):
    return {
        "test_map": test_map,
        "best_val_map": val_map,
        "best_epoch": best_epoch,
        "wall_time_s": wall_time_s,
        "test_groups": groups or {},
    }


def workdir(path, run_config, run_result=None, records=()):
    """A workdir as bridgegap_jax.main leaves it: config.json, and result.json / metrics.jsonl if given."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
    if run_result is not None:
        (path / "result.json").write_text(json.dumps(run_result))
    if records:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def parse(text):
    """(header, rows as dicts, the 'common:' line) of a printed table."""
    lines = text.strip().splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    header = cells[0]
    assert set(lines[1]) <= set("|-:")  # the markdown header rule
    common = [line for line in lines if line.startswith("common: ")]
    return header, [dict(zip(header, row)) for row in cells[2:]], common[0] if common else None


def test_one_row_per_run_with_differing_fields_scores_and_status(tmp_path, capsys):
    runs = [
        workdir(tmp_path / "boost", config(), result(61.234, 62.0, 7)),
        workdir(
            tmp_path / "an", config(**{"model.alpha": 1.0, "loss.scheme": "AN"}), result(55.0, 56.5, 9, 59.6)
        ),
        workdir(
            tmp_path / "half",
            config(**{"model.alpha": 1.0}),
            records=[
                {"kind": "train", "step": 100, "epoch": 1, "loss": 0.3},
                {"kind": "validation", "step": 100, "epoch": 1, "map": 40.0},
                {"kind": "validation", "step": 200, "epoch": 2, "map": 45.5},
                {"kind": "validation", "step": 300, "epoch": 3, "map": 45.5},
                {"kind": "train", "step": 350, "epoch": 4, "loss": 0.2},
            ],
        ),
        workdir(tmp_path / "fresh", config(**{"train.num_epochs": 20})),
    ]
    assert report.main(runs) == 0
    header, rows, common = parse(capsys.readouterr().out)
    assert header == [
        "run",
        "loss.scheme",
        "model.alpha",
        "train.num_epochs",
        "best epoch",
        "val mAP",
        "test mAP",
        "wall time",
        "status",
    ]
    assert rows[0] == {
        "run": runs[0],
        "loss.scheme": "LL-R",
        "model.alpha": "5.0",
        "train.num_epochs": "10",
        "best epoch": "7",
        "val mAP": "62.00",
        "test mAP": "61.23",
        "wall time": "1:02:05",
        "status": "finished",
    }
    assert rows[1]["loss.scheme"] == "AN" and rows[1]["wall time"] == "0:01:00"
    # Unfinished: the best validation so far (the first of equal ones), no test, the latest epoch it reached.
    assert (rows[2]["best epoch"], rows[2]["val mAP"], rows[2]["test mAP"]) == ("2", "45.50", "")
    assert rows[2]["status"] == "unfinished, epoch 4/10"
    assert rows[3]["status"] == "not started" and rows[3]["val mAP"] == ""
    assert common == "common: data.image_size=32, data.name=demo, model.pretrained='', seed=0"


def test_openimages_groups_get_columns(tmp_path, capsys):
    """Groups as the trainer writes them (a group without an observed class has a null mAP);
    tests/test_end_to_end.py reports a real run's."""
    groups = {f"group{g}": {"map": 10.0 * g, "map_with_positives": 11.0 * g} for g in range(1, 5)}
    groups["group5"] = {"map": None, "map_with_positives": None}
    runs = [
        workdir(tmp_path / "a", config(), result(30.0, groups=groups)),
        workdir(tmp_path / "b", config(seed=1), result(31.0)),
    ]
    report.main(runs)
    header, rows, _ = parse(capsys.readouterr().out)
    assert header[header.index("test mAP") + 1 :][:5] == ["group1", "group2", "group3", "group4", "group5"]
    assert rows[0]["group4"] == "40.00" and rows[1]["group4"] == ""
    assert rows[0]["group5"] == ""


def test_seeds_groups_runs_that_differ_only_in_seed(tmp_path, capsys):
    runs = []
    for seed, test_map in enumerate([70.0, 71.0, 75.0]):
        # images/s: the median of the logged windows after the first (which includes compilation)
        pace = [
            {"kind": "train", "step": 100 * (i + 1), "images_per_second": r}
            for i, r in enumerate([5, 90 + seed, 100 + seed, 80])
        ]
        boost = workdir(
            tmp_path / f"boost_{seed}",
            config(seed=seed),
            result(test_map, val_map=test_map + 1, wall_time_s=100.0 + 10 * seed),
            records=pace,
        )
        runs.append(boost)
    for seed, test_map in enumerate([60.0, 64.0]):
        an = config(seed=seed, **{"model.alpha": 1.0})
        runs.append(workdir(tmp_path / f"an_{seed}", an, result(test_map)))
    runs.append(
        workdir(
            tmp_path / "an_2",
            config(seed=2, **{"model.alpha": 1.0}),
            records=[{"kind": "validation", "step": 10, "epoch": 1, "map": 99.0}],
        )
    )
    assert report.main(["--seeds", *runs]) == 0
    header, rows, common = parse(capsys.readouterr().out)
    assert header == [
        "model.alpha",
        "seeds",
        "n",
        "val mAP",
        "test mAP",
        "steps",
        "wall time",
        "img/s",
        "status",
    ]
    # mean 72, sample std sqrt((4 + 1 + 9) / 2) = 2.65
    assert rows[0] == {
        "model.alpha": "5.0",
        "seeds": "0,1,2",
        "n": "3",
        "val mAP": "73.00 ± 2.65",
        "test mAP": "72.00 ± 2.65",
        "steps": "400",
        "wall time": "0:01:50",  # mean of 100, 110 and 120 s
        "img/s": "91",  # mean of the runs' medians 90, 91, 92
        "status": "finished",
    }
    # Only finished runs count: the unfinished seed's 99.0 is left out, and named.
    assert (rows[1]["seeds"], rows[1]["n"], rows[1]["test mAP"]) == ("0,1,2", "2", "62.00 ± 2.83")
    assert rows[1]["val mAP"] == "50.00 ± 0.00"
    assert rows[1]["status"] == f"{runs[-1]}: unfinished, epoch 1/10"
    assert "seed=" not in common and "loss.scheme=LL-R" in common


def test_each_run_s_noise_scale_over_its_last_epoch_is_printed_under_the_table(tmp_path, capsys):
    """The mean of the values its last epoch logged (unknown ones counted apart), and what it means; a
    run that logged none (older, or measured with noise_scale_parts=0) adds nothing."""

    def train(step, epoch, noise):
        return {"kind": "train", "step": step, "epoch": epoch, "loss": 0.3, "noise_scale": noise}

    measured = workdir(
        tmp_path / "measured",
        config(),
        result(61.0),
        records=[train(25, 1, None), train(50, 1, 40.0), train(75, 2, 300.2), train(100, 2, None)]
        + [train(125, 2, 340.0), {"kind": "validation", "step": 125, "epoch": 2, "map": 60.0}],
    )
    unknown = workdir(tmp_path / "unknown", config(seed=1), records=[train(25, 1, 40.0), train(50, 2, None)])
    older = workdir(tmp_path / "older", config(seed=2), result(60.0), records=[{"kind": "train", "step": 5}])
    assert report.main([measured, unknown, older]) == 0
    out = capsys.readouterr().out
    assert parse(out)[0][0] == "run"  # the table as before, then:
    assert out.endswith(
        "\n\n"
        f"noise scale of {measured}: 320 (mean of the 2 value(s) logged in epoch 2; 1 more unknown): batches up "
        "to about 320 use their steps efficiently; past it each doubling of the batch buys less than 2x fewer "
        "steps\n"
        f"noise scale of {unknown}: unknown in epoch 2: the gradient was not told apart from its noise: the noise "
        "scale is beyond what this batch measures (a larger batch, or more log points, can)\n"
    )
    assert report.main([older]) == 0
    assert "noise scale of" not in capsys.readouterr().out


def test_config_values_read_as_typed():
    """Floats made by multiplying (a grid's lr x factor) read as the number meant; others as written."""
    assert report.value_text(3e-4 * 1e4) == "3.0" and 3e-4 * 1e4 != 3.0
    assert [report.value_text(v) for v in (0.0003, 1e-05, 1.0, 16, "a|b", "")] == [
        "0.0003",
        "1e-05",
        "1.0",
        "16",
        "a\\|b",
        "''",
    ]


def report_command(*paths):
    return subprocess.run(
        [sys.executable, "-m", "bridgegap_jax.report", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_path_gets_a_row_or_says_what_it_is(tmp_path):
    """One empty or damaged workdir among many still gives the table of the others (before: exit code 2
    and no table), and a file is not a run (before: 'does not exist')."""
    good = workdir(tmp_path / "good", config(), result(1.0))
    broken_result = workdir(tmp_path / "broken_result", config(seed=1))
    (tmp_path / "broken_result" / "result.json").write_text('{"test_map": ')
    (tmp_path / "plain").mkdir()
    (tmp_path / "a_file").write_text("not a run")
    (tmp_path / "broken_config").mkdir()
    (tmp_path / "broken_config" / "config.json").write_text('{"seed": ')
    paths = [
        good,
        broken_result,
        *(tmp_path / name for name in ("missing", "plain", "a_file", "broken_config")),
    ]
    done = report_command(*paths)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    _, rows, common = parse(done.stdout)
    notes = done.stdout.split(common + "\n\n", 1)[1]  # under the table
    assert [(row["run"], row["status"]) for row in rows] == [
        (good, "finished"),
        (broken_result, "damaged result.json"),
    ]
    assert notes.strip().splitlines() == [
        (
            f"{broken_result}: damaged result.json: (Expecting value: line 1 column 14 (char 13)); delete it, and "
            "the command that trained this run tests its best checkpoint again and rewrites it"
        ),
        f"{tmp_path / 'missing'}: does not exist",
        f"{tmp_path / 'plain'}: not a run (no config.json: not a workdir of bridgegap_jax.main)",
        f"{tmp_path / 'a_file'}: not a run (a file, not a workdir of bridgegap_jax.main)",
        (
            f"{tmp_path / 'broken_config'}: damaged config.json (Expecting value: line 1 column 10 (char 9)); it "
            "holds the config this run was started with: delete it to go on with the config of your command (only "
            "if it is that one), or use a new --workdir"
        ),
    ]


def test_no_readable_run_is_exit_code_2_with_a_line_for_each(tmp_path):
    (tmp_path / "plain").mkdir()
    done = report_command(tmp_path / "missing", tmp_path / "plain")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"error: {tmp_path / 'missing'}: does not exist\n"
        f"error: {tmp_path / 'plain'}: not a run (no config.json: not a workdir of bridgegap_jax.main)\n"
    )


def test_a_run_whose_latest_checkpoints_would_not_restore_says_so(tmp_path, capsys):
    """Both latest checkpoints damaged (a resume stops there); with one intact it is plain unfinished.
    Read without JAX (checkpoint_files.py); here orbax writes the checkpoints, as the trainer does."""
    import numpy as np

    from bridgegap_jax.run.checkpoint import RunCheckpoints
    from bridgegap_jax.run.rundir import RunDir

    records = [{"kind": "train", "step": 10, "epoch": 1}, {"kind": "train", "step": 20, "epoch": 2}]
    run = workdir(tmp_path / "run", config(), records=records)
    checkpoints = RunCheckpoints(RunDir(run).checkpoints)
    for step in (10, 20):
        state = {"train": {"w": np.random.default_rng(step).standard_normal(4096, np.float32)}, "host": {}}
        checkpoints.save_latest(step, state, {"epoch": step // 10, "step_in_epoch": 0})
    checkpoints.close()
    data = tmp_path / "run" / "checkpoints" / "latest" / "{}" / "state" / "ocdbt.process_0" / "d"
    largest = {step: max(Path(str(data).format(step)).iterdir(), key=os.path.getsize) for step in (10, 20)}
    os.truncate(largest[20], 100)
    assert report.main([run]) == 0
    assert parse(capsys.readouterr().out)[1][0]["status"] == "unfinished, epoch 2/10"  # resumes from step 10
    largest[10].unlink()
    assert report.main([run]) == 0
    out = capsys.readouterr().out
    assert parse(out)[1][0]["status"] == "latest checkpoints unreadable"
    assert re.fullmatch(
        rf"{run}: latest checkpoints unreadable: step 20: state: ocdbt.process_0/d/{largest[20].name} is cut short "
        rf"\(100 of at least \d+ bytes\); step 10: state: ocdbt.process_0/d/{largest[10].name} is missing; a "
        r"resume stops there: use a new --workdir, or move its checkpoints folder away to start it again",
        out.strip().splitlines()[-1],
    )
