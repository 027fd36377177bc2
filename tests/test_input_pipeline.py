"""The input pipeline over simulated processes: order, per-process reads, resume cost, workers,
evaluation coverage, simulated partial-label masks, and the decoder against PIL."""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import sideways_photo, upright_picture

from bridgegap_jax.data import catalog, images, input_pipeline, masks
from bridgegap_jax.prepare.fake import photo_like_jpeg

IMAGE_SIZE = 8  # decoding still happens; a tiny resize keeps it fast


@pytest.fixture(scope="module")
def dataset(demo_data_dir):
    return catalog.open_dataset("demo", demo_data_dir)


@pytest.fixture(scope="module")
def stored(dataset):
    """labels / labels_obs of the train split by index."""
    source = dataset.source("train")
    rows = source.__getitems__(list(range(len(source))))
    return {k: np.stack([r[k] for r in rows]) for k in ("labels", "labels_obs")}


@pytest.fixture
def reads(monkeypatch):
    """Every example index each split's source was asked for, in order (in-process reading only)."""
    log = {}
    original = catalog.Dataset.source

    class Counting:
        def __init__(self, source, split):
            self.source, self.split = source, split

        def __len__(self):
            return len(self.source)

        def __getitems__(self, index):
            log.setdefault(self.split, []).extend(index)
            return self.source.__getitems__(index)

    monkeypatch.setattr(catalog.Dataset, "source", lambda self, split: Counting(original(self, split), split))
    return log


def options(**kwargs):
    return input_pipeline.Options(
        **{
            "image_size": IMAGE_SIZE,
            "batch_size": 48,
            "eval_batch_size": 64,
            "seed": 3,
            "row_multiple": 8,
            **kwargs,
        }
    )


def train_epoch(dataset, count, epoch=2, **kwargs):
    """One epoch read by `count` simulated processes: [(global batch index, labels by process)] per step."""
    steps = input_pipeline.steps_per_epoch(dataset.split_sizes["train"], options(**kwargs))
    plan = [input_pipeline.Segment("train", steps, epoch)]
    streams = []
    for p in range(count):
        reader = input_pipeline.BatchReader(
            dataset, plan, options(process_index=p, process_count=count, **kwargs)
        )
        streams.append([reader(i) for i in range(len(reader))])
    out = []
    for batches in zip(*streams):
        batch_index = batches[0]["batch_index"]
        for p, b in enumerate(batches):  # every process sees the same global batch, and holds its block of it
            np.testing.assert_array_equal(b["batch_index"], batch_index)
            rows = len(batch_index) // count
            np.testing.assert_array_equal(b["index"], batch_index[p * rows : (p + 1) * rows])
            assert b["image"].shape == (rows, IMAGE_SIZE, IMAGE_SIZE, 3) and b["image"].dtype == np.uint8
        out.append((batch_index, np.concatenate([b["labels"] for b in batches])))
    return out


@pytest.mark.parametrize("count", [1, 2, 8])
def test_an_epoch_is_a_permutation_the_same_for_every_process_count(dataset, stored, count):
    steps = train_epoch(dataset, count)
    order = np.concatenate([s[0] for s in steps])
    n = dataset.split_sizes["train"]  # 1600 = 33 x 48 + 16: the last batch (16 rows) splits over 8 devices
    assert len(steps) == 34 and len(steps[-1][0]) == 16
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    np.testing.assert_array_equal(np.concatenate([s[1] for s in steps]), stored["labels_obs"][order])
    np.testing.assert_array_equal(
        order, input_pipeline.epoch_permutation(3, 2, n)
    )  # a function of (seed, epoch)
    if count == 8:
        other_epoch = np.concatenate([s[0] for s in train_epoch(dataset, 1, epoch=3)])
        assert not np.array_equal(order, other_epoch)
        np.testing.assert_array_equal(np.sort(other_epoch), np.arange(n))


def test_a_process_reads_only_its_own_rows(dataset, reads):
    plan = [input_pipeline.Segment("train", 5, 1), input_pipeline.Segment("test", 2)]
    reader = input_pipeline.BatchReader(dataset, plan, options(process_index=1, process_count=4))
    batches = [reader(i) for i in range(len(reader))]
    train_rows = np.concatenate([b["index"] for b in batches[:5]])
    assert reads["train"] == train_rows.tolist() and len(train_rows) == 5 * 12  # 12 of each 48
    assert reads["test"] == list(range(16, 32)) + list(range(80, 96))  # rows 16..31 of each batch of 64


def test_resuming_reads_nothing_before_the_resume_point(dataset, reads):
    o = options()
    reader = input_pipeline.BatchReader(dataset, input_pipeline.run_plan(dataset, o, 3), o)
    start = reader.segment_start(2) + 17  # epoch 2, step 17
    with input_pipeline.Stream(reader, start) as stream:
        first = next(stream)
        assert len(reads["train"]) <= o.batch_size  # one batch read before the first one is yielded
        uninterrupted = input_pipeline.BatchReader(dataset, input_pipeline.run_plan(dataset, o, 3), o)(start)
        for key in first:
            np.testing.assert_array_equal(first[key], uninterrupted[key])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(dataset):
    o = options(image_size=16)
    plan = [input_pipeline.Segment("train", 4, 1), input_pipeline.Segment("validation", 2)]
    reader = input_pipeline.BatchReader(dataset, plan, o)
    with input_pipeline.Stream(reader, 1, workers=2) as stream:
        got = list(stream)
    assert len(got) == len(reader) - 1
    for position, batch in enumerate(got, start=1):
        want = reader(position)
        assert batch.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(batch[key], want[key])


HOLDS_A_BATCH = """
import sys

from bridgegap_jax.data import catalog, input_pipeline

HELD = []  # batches still referenced as the process ends (a caller's global, an exception's traceback)


def main():
    dataset = catalog.open_dataset("demo", sys.argv[1])
    options = input_pipeline.Options(image_size=16, batch_size=16, eval_batch_size=16)
    plan = input_pipeline.eval_plan(dataset, "validation", options)
    with input_pipeline.Stream(input_pipeline.BatchReader(dataset, plan, options), workers=2) as stream:
        HELD.extend(stream.take(3))
    print(len(HELD), HELD[-1]["image"].shape, int(HELD[-1]["image"].sum()))


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_batches_from_workers_that_outlive_the_stream_leak_no_shared_memory(dataset, demo_data_dir, tmp_path):
    """A process that still holds batches from worker processes when it ends prints nothing on stderr:
    no 'resource_tracker: There appear to be N leaked shared_memory objects', no __del__ errors."""
    from helpers import ROOT

    script = tmp_path / "holds_batches.py"
    script.write_text(HOLDS_A_BATCH)
    done = subprocess.run(
        [sys.executable, str(script), demo_data_dir],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    o = input_pipeline.Options(image_size=16, batch_size=16, eval_batch_size=16)  # the script's
    third = input_pipeline.BatchReader(dataset, input_pipeline.eval_plan(dataset, "validation", o), o)(2)
    assert done.stdout.split() == ["3", "(16,", "16,", "16,", "3)", str(int(third["image"].sum()))]


def test_flips_are_keyed_by_example_and_epoch(dataset):
    plan = [input_pipeline.Segment("train", 1, 1)]
    flipped = input_pipeline.BatchReader(dataset, plan, options(image_size=96))(0)
    plain = input_pipeline.BatchReader(dataset, plan, options(image_size=96, random_flip=False))(0)
    flips = input_pipeline.flips(3, 1, flipped["index"])
    assert 0 < flips.sum() < len(flips)
    np.testing.assert_array_equal(flipped["image"][flips], plain["image"][flips][:, :, ::-1])
    np.testing.assert_array_equal(flipped["image"][~flips], plain["image"][~flips])


@pytest.mark.parametrize("count", [1, 2, 8])
def test_eval_counts_every_example_once(dataset, count):
    streams = []
    for p in range(count):
        o = options(process_index=p, process_count=count)
        reader = input_pipeline.BatchReader(dataset, input_pipeline.eval_plan(dataset, "test", o), o)
        streams.append([reader(i) for i in range(len(reader))])
    index = []
    for batches in zip(*streams):
        for b in batches:
            assert b["image"].shape == (64 // count, IMAGE_SIZE, IMAGE_SIZE, 3)
        index.append(np.concatenate([b["index"] for b in batches]))  # the global batch, in process order
    index = np.concatenate(index)
    n = dataset.split_sizes["test"]  # 480 = 7.5 batches of 64
    assert len(index) == 8 * 64
    np.testing.assert_array_equal(index[:n], np.arange(n))  # every example once, in stored order
    assert (index[n:] == -1).all()


def test_simulated_single_positive_is_keyed_by_index(dataset, stored):
    by_process_count = []
    for count in (1, 2):
        steps = train_epoch(dataset, count, observation="single_positive")
        order = np.concatenate([s[0] for s in steps])
        labels = np.empty_like(stored["labels"])
        labels[order] = np.concatenate([s[1] for s in steps])
        by_process_count.append(labels)
    np.testing.assert_array_equal(by_process_count[0], by_process_count[1])
    obs = by_process_count[0]
    np.testing.assert_array_equal((obs == 1).sum(1), 1)
    assert (stored["labels"][obs == 1] == 1).all() and set(np.unique(obs)) == {0, 1}
    # Another epoch (another order) observes the same labels.
    for index, labels in train_epoch(dataset, 1, epoch=5, observation="single_positive"):
        np.testing.assert_array_equal(labels, obs[index])


# ---- masks.observe directly -----------------------------------------------------------------
def _observe_all(labels, mode, encoding, seed=0, index=None):
    index = np.arange(len(labels)) if index is None else index
    return masks.observe(labels, index, mode=mode, seed=seed, encoding=encoding)


def _full_labels(n=40, c=12):
    rng = np.random.default_rng(0)
    labels = (rng.random((n, c)) < 0.3).astype(np.int8)
    labels[0] = 0  # no positive
    labels[1] = 1  # all positive
    return labels


def test_k_positives():
    labels = _full_labels()
    obs = _observe_all(labels, "k_positives:3", "single_positive")
    np.testing.assert_array_equal((obs == 1).sum(1), np.minimum(labels.sum(1), 3))
    assert (labels[obs == 1] == 1).all() and set(np.unique(obs)) <= {0, 1}
    # Keyed by (seed, index): the same row under another index or seed draws differently somewhere.
    assert not np.array_equal(
        obs, _observe_all(labels, "k_positives:3", "single_positive", index=np.arange(40) + 1)
    )
    assert not np.array_equal(obs, _observe_all(labels, "k_positives:3", "single_positive", seed=1))
    np.testing.assert_array_equal(obs, _observe_all(labels, "k_positives:3", "single_positive"))


def test_fraction_full_labels():
    labels = _full_labels()
    obs = _observe_all(labels, "fraction:0.25", "single_positive")
    np.testing.assert_array_equal((obs != 0).sum(1), 3)  # round(0.25 * 12)
    np.testing.assert_array_equal(obs[obs != 0] == 1, labels[obs != 0] == 1)  # known labels keep their value


def test_partial_encoding_draws_only_verified_labels():
    labels = np.full((30, 20), -1, np.int8)
    rng = np.random.default_rng(1)
    labels[rng.random(labels.shape) < 0.4] = 0
    labels[rng.random(labels.shape) < 0.2] = 1
    obs = _observe_all(labels, "fraction:0.5", "partial")
    verified = (labels != -1).sum(1)
    np.testing.assert_array_equal((obs != -1).sum(1), np.round(0.5 * verified).astype(int))
    assert (obs[obs != -1] == labels[obs != -1]).all()
    single = _observe_all(labels, "single_positive", "partial")
    np.testing.assert_array_equal((single == 1).sum(1), np.minimum((labels == 1).sum(1), 1))
    assert set(np.unique(single)) <= {-1, 1}


@pytest.mark.parametrize(
    "mode", ["k_positives:0", "k_positives:x", "fraction:0", "fraction:1.5", "half", "k_positives:2.0"]
)
def test_bad_modes(mode):
    with pytest.raises(ValueError, match="config.data.observation"):
        masks.parse(mode)


# ---- the decoder ------------------------------------------------------------------------------
def test_decoders_against_the_references_pil_resize():
    """The VOC / COCO image sizes (640x480, 500x375) to the protocol's 448: 'bilinear' within one grey
    level of the reference's PIL resize (mean abs over the images), 'pil' equal to it."""
    from PIL import Image

    differences = []
    for seed in range(6):
        data = photo_like_jpeg(seed, (640, 480) if seed % 2 == 0 else (500, 375))
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
            pil_decoded = np.asarray(rgb)
            pil_448 = np.asarray(rgb.resize((448, 448), Image.BILINEAR))
        np.testing.assert_array_equal(images.decode(data, "bilinear"), pil_decoded)  # the same libjpeg decode
        np.testing.assert_array_equal(images.decode_and_resize(data, 448, "pil"), pil_448)  # exact
        default = images.decode_and_resize(data, 448, "bilinear")
        assert default.shape == (448, 448, 3) and default.dtype == np.uint8
        differences.append(np.abs(default.astype(float) - pil_448).mean())
    assert np.mean(differences) < 1.0


def test_unreadable_bytes_are_a_decode_error():
    for method in images.RESIZE_METHODS:
        with pytest.raises(images.DecodeError):
            images.decode_and_resize(b"\xff\xd8\xff\xe0 not a jpeg", 32, method)
    assert images.verify(b"") is not None and images.verify(photo_like_jpeg(0)) is None


@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
def test_both_decoders_turn_a_photo_upright_by_its_exif_orientation(orientation):
    """A phone photo: pixels stored turned, with the EXIF tag that turns them back. Both decoders show it
    upright, pixel for pixel the same, so prepare keeps it and either resize trains on the same image."""
    data = sideways_photo(orientation)
    decoded = {method: images.decode(data, method) for method in images.RESIZE_METHODS}
    np.testing.assert_array_equal(decoded["bilinear"], decoded["pil"])
    assert decoded["pil"].shape == (80, 40, 3)
    assert np.abs(decoded["pil"].astype(int) - upright_picture()).mean() < 2  # JPEG's loss only
    assert images.verify(data) is None
    for method in images.RESIZE_METHODS:
        small = images.decode_and_resize(data, 8, method).astype(int)  # top left red, bottom dark
        assert small[0, 0, 0] > 150 > small[0, 0, 1] and small[-1].max() < 60


def test_the_readme_pytorch_preprocessing_turns_a_photo_as_training_does(tmp_path):
    """The PyTorch code of docs/own_data.md reads image files itself: its OpenCV lines and the PIL expression it
    gives for data.resize=pil make exactly what evaluation and predict decode, a turned photo included."""
    import re

    import cv2
    import PIL.Image
    import PIL.ImageOps
    from helpers import OWN_DATA_PAGE, ROOT, readme_python

    code = readme_python("load_file")
    loop = re.search(r"\n(\s+)image = cv2\..*\n\1batch\.append\(.*\)\n", code)[0]
    with open(os.path.join(ROOT, OWN_DATA_PAGE), encoding="utf-8") as f:
        pil_line = re.search(r"resize with `(PIL\.[^`]*)` instead", f.read())[1]
    path = str(tmp_path / "portrait.jpg")
    with open(path, "wb") as f:
        f.write(sideways_photo(6))
    size, batch = 16, []
    exec(textwrap.dedent(loop), {"cv2": cv2, "path": path, "size": size, "batch": batch})
    pil = eval(" ".join(pil_line.split()), {"PIL": PIL, "path": path, "size": size})
    with open(path, "rb") as f:
        data = f.read()
    np.testing.assert_array_equal(batch[0], images.decode_and_resize(data, size, "bilinear"))
    np.testing.assert_array_equal(np.asarray(pil), images.decode_and_resize(data, size, "pil"))
    assert np.asarray(pil)[0, 0, 0] > 150 > np.asarray(pil)[0, 0, 1]  # upright: the red square top left
