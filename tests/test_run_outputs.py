"""What a run leaves for the user to read: metrics.jsonl in strict JSON, and the same scalars in
TensorBoard event files, read back here without TensorFlow (the record framing parsed by hand); and
checkpoints that name no module of the package, so that moving code never strands a run."""

import json
import struct
import time

import pytest

from bridgegap_jax.run import run_log, rundir, trainer


def read_events(logdir):
    """Every event of the event files in `logdir`, checking each record's length and data CRCs.

    A record: uint64 length, uint32 masked CRC-32C of the length, the Event proto, its masked CRC.
    """
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(logdir.iterdir()):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            length, length_crc = struct.unpack("<QI", data[pos : pos + 12])
            payload, end = data[pos + 12 : pos + 12 + length], pos + 16 + length
            (payload_crc,) = struct.unpack("<I", data[end - 4 : end])
            assert length_crc == masked_crc32c(data[pos : pos + 8]), path
            assert payload_crc == masked_crc32c(payload), path
            events.append(event_pb2.Event.FromString(payload))
            pos = end
    return events


def strict_json(line):
    def refuse(constant):
        raise AssertionError(f"{constant} is not strict JSON: {line}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_data_dir):
    """A one-epoch tiny run, logging every 10 of its 25 steps (and at the last)."""
    from helpers import tiny_demo

    config = tiny_demo(demo_data_dir, train__num_epochs=1, train__log_every_steps=10)
    workdir = tmp_path_factory.mktemp("run")
    start = time.time()
    trainer.train_and_evaluate(config, str(workdir))
    return workdir, start, time.time()


def test_checkpoints_name_no_module_of_the_package(finished_run):
    # A run's checkpoints hold arrays and plain records only: a pickled class would tie every saved
    # run to the module path it had (a run trained before the package moved into its wings resumed
    # after the move, bit for bit, because nothing there names a module).
    workdir, _, _ = finished_run
    files = [path for path in (workdir / rundir.CHECKPOINTS_DIR).rglob("*") if path.is_file()]
    assert files and [str(path) for path in files if b"bridgegap_jax" in path.read_bytes()] == []


def test_metrics_jsonl_is_strict_json_with_a_wall_time(finished_run):
    workdir, start, end = finished_run
    records = [strict_json(line) for line in (workdir / rundir.METRICS_FILE).read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 10),
        ("train", 20),
        ("train", 25),
        ("validation", 25),
        ("test", 25),
    ]
    for record in records:
        assert start <= record["wall_time"] <= end
    assert {
        "loss",
        "grad_norm",
        "noise_scale",
        "k",
        "num_selected",
        "lr",
        "images_per_second",
        "epoch",
    } <= set(records[0])
    assert {"map", "loss", "epoch"} <= set(records[3]) and {"map", "loss"} <= set(records[4])


def test_tensorboard_holds_the_same_scalars_at_the_same_steps(finished_run):
    workdir, _, _ = finished_run
    scalars = {}  # tag -> [(step, value, wall_time)]
    for event in read_events(workdir / rundir.TENSORBOARD_DIR):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value, event.wall_time))
    for tag in (
        "train/loss",
        "train/grad_norm",
        "train/k",
        "train/num_selected",
        "train/lr",
        "train/images_per_second",
    ):
        assert [step for step, _, _ in scalars[tag]] == [10, 20, 25], tag
    for tag in ("validation/map", "validation/loss", "test/map", "test/loss"):
        assert [step for step, _, _ in scalars[tag]] == [25], tag
    assert [step for step, _, _ in scalars["train/noise_scale"]][-1] == 25  # null while unknown: no scalar
    # Every number of metrics.jsonl is a scalar "<kind>/<field>" at the record's step and wall time.
    records = [json.loads(line) for line in (workdir / rundir.METRICS_FILE).read_text().splitlines()]
    expected = {}
    for record in records:
        for field, value in record.items():
            if field not in ("kind", "step", "wall_time") and isinstance(value, (int, float)):
                point = (record["step"], value, record["wall_time"])
                expected.setdefault(f"{record['kind']}/{field}", []).append(point)
    assert sorted(scalars) == sorted(expected)
    for tag, points in expected.items():
        assert len(scalars[tag]) == len(points), tag
        for (step, value, wall_time), got in zip(points, scalars[tag]):
            assert got == (step, pytest.approx(value, rel=1e-6), pytest.approx(wall_time, abs=1e-3)), tag


def test_a_new_run_drops_the_records_of_one_stopped_before_its_first_checkpoint(tmp_path):
    run_dir = rundir.RunDir(str(tmp_path))
    log = run_log.RunLog(run_dir, enabled=True)
    log.record("train", 25, loss=0.5)
    log.close()  # stopped at step 25, with no checkpoint: the rerun starts again at step 0
    log = run_log.RunLog(run_dir, enabled=True)
    log.record("train", 25, loss=0.4)
    log.close()
    records = [json.loads(line) for line in (tmp_path / rundir.METRICS_FILE).read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(25, 0.4)]
