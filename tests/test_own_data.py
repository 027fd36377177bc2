"""Your own data end to end: a folder with every quirk of a real one (a byte-order mark, CRLF, quoted
names with commas, upper-case extensions, nested folders, PNG, WebP and JPEG, a phone photo stored
sideways with its EXIF orientation, one missing and one corrupt image) -> prepare folder -> train (configs/folder.py at tiny size: one run, shared) ->
predict -> export, and the README's PyTorch code on the exported file."""

import csv
import json
import os

import numpy as np
import pytest
from helpers import read_csv, run_readme_pytorch

from bridgegap_jax import export, predict
from bridgegap_jax.base import sharding
from bridgegap_jax.base.files import sha256
from bridgegap_jax.data import catalog, input_pipeline
from bridgegap_jax.data import images as images_module
from bridgegap_jax.model.safetensors_file import read_metadata, read_safetensors
from bridgegap_jax.prepare import cli, writer
from bridgegap_jax.run import configuration, evaluation, trained_run, trainer

CLASSES = ["bird, small", "cat", "dog"]  # as the table's labels give them; sorted
SPLITS = {"train": 16, "validation": 4, "test": 4}  # readable images: batches of 8 without a remainder
SPLITS_OF_IMAGES = [split for split, count in SPLITS.items() for _ in range(count)]  # of image i
FORMATS = [(".JPG", "JPEG"), (".png", "PNG"), (".WebP", "WEBP"), (".PNG", "PNG")]


def image_name(i: int, split: str) -> str:
    """Image i: in the top folder, sub/ or sub/deeper/; a comma and a space; JPG, png, WebP or PNG."""
    return f"{['', 'sub/', 'sub/deeper/'][i % 3]}photo {i}, {split}{FORMATS[i % len(FORMATS)][0]}"


def make_folder(root):
    """Images of a colour per class, in nested folders, and labels.csv; returns (images, table)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images, rows = root / "images", []
    colours = {"bird, small": (200, 40, 40), "cat": (40, 200, 40), "dog": (40, 40, 200)}
    i = 0
    for split, count in SPLITS.items():
        for _ in range(count):
            name, fmt = image_name(i, split), FORMATS[i % len(FORMATS)][1]
            positives = [CLASSES[i % 3]] + ([CLASSES[(i + 1) % 3]] if i % 4 == 0 else [])
            negatives = [CLASSES[(i + 2) % 3]] if i % 2 == 0 else []
            pixels = rng.integers(0, 60, (48, 40, 3)) + np.mean([colours[c] for c in positives], 0)
            (images / name).parent.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            if i == 0:  # a phone's portrait: stored turned, with the EXIF tag that turns it upright
                exif = Image.Exif()
                exif[0x0112] = 6
                picture.transpose(Image.Transpose.ROTATE_90).save(images / name, format=fmt, exif=exif)
            else:
                picture.save(images / name, format=fmt)
            rows.append([name, "|".join(positives), "|".join(negatives), split.upper() if i == 5 else split])
            i += 1
    rows.insert(3, ["not there.jpg", "cat", "", "train"])  # missing
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")  # corrupt
    rows.append(["broken.png", "dog", "cat", "test"])
    table = root / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8-sig") as f:  # byte-order mark, CRLF, quoting
        out = csv.writer(f, lineterminator="\r\n")
        out.writerow(["file_name", "labels", "negatives", "split"])
        out.writerows(rows)
    return images, table


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    images, table = make_folder(root)
    data_dir = root / "data"
    argv = ["folder", f"--images={images}", f"--labels={table}", "--name=own", f"--data_dir={data_dir}"]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv + ["--workers=1"]) == 0
    return root, images, table, str(data_dir), out.getvalue()


@pytest.fixture(scope="module")
def trained(prepared):
    """One tiny run of configs/folder.py, shared: a width-64 ResNet-18 at 64x64 (torchvision can build it)."""
    from configs import folder

    root, images, table, data_dir, _ = prepared
    config = folder.get_config()
    for key, value in {
        "data.name": "folder:own",
        "data.data_dir": data_dir,
        "data.image_size": 64,
        "data.workers": 0,
        "model.depth": 18,
        "model.pretrained": "",
        "train.batch_size": 8,
        "train.eval_batch_size": 8,
        "train.num_epochs": 1,
        "train.lr": 1e-3,
        "train.log_every_steps": 1,
        "train.checkpoint_every_steps": 100,
    }.items():
        section, name = key.split(".")
        config[section][name] = value
    workdir = str(root / "run")
    result = trainer.train_and_evaluate(config, workdir)
    return root, images, data_dir, config, workdir, result


def test_prepare_reads_every_quirk_and_lists_what_it_skipped(prepared):
    root, images, table, data_dir, out = prepared
    assert "label encoding: partial" in out and "test: evaluation on observed labels only" in out
    assert "splits from the table's split column: train 17, validation 4, test 5" in out
    assert (
        "prepared folder:own in" in out and "--config=configs/folder.py --config.data.name=folder:own" in out
    )
    dataset = catalog.open_dataset("folder:own", data_dir)
    assert dataset.class_names == tuple(CLASSES) and dataset.split_sizes == SPLITS
    assert dataset.evaluation == {"validation": "observed", "test": "observed"}
    with open(os.path.join(dataset.directory, "folder_dataset.json")) as f:
        description = json.load(f)
    assert description["source"]["labels_sha256"] == sha256(str(table))
    assert description["splits"]["train"]["missing"] == 1 and description["splits"]["test"]["unreadable"] == 1
    skipped = {
        split: writer.read_manifest(os.path.join(dataset.directory, f"missing_{split}.tsv"))
        for split in catalog.SPLITS
    }
    assert [row[:2] for row in skipped["train"]] == [("not there.jpg", "missing")]
    assert [row[:2] for row in skipped["test"]] == [("broken.png", "unreadable")] and not skipped[
        "validation"
    ]
    records = dataset.source("train").__getitems__(list(range(16)))
    assert [r["image_id"].decode() for r in records] == [image_name(i, "train") for i in range(16)]
    for method in images_module.RESIZE_METHODS:  # the photo stored sideways: upright in both decoders
        assert images_module.decode(records[0]["image"], method).shape == (48, 40, 3)
    # "photo 0" is positive for bird and cat and negative for dog; unknown is -1 (the partial encoding)
    assert records[0]["labels_obs"].tolist() == [1, 1, 0] and records[1]["labels_obs"].tolist() == [-1, 1, -1]
    by_path = catalog.open_dataset(os.path.dirname(dataset.directory), "elsewhere")  # a path, no data_dir
    assert by_path.directory == dataset.directory and by_path.label_encoding == "partial"


@pytest.mark.slow
def test_the_result_says_how_it_was_evaluated(trained):
    *_, workdir, result = trained
    assert result["evaluation"] == {"validation": "observed", "test": "observed"}
    with open(os.path.join(workdir, "result.json")) as f:
        assert json.load(f)["evaluation"]["test"] == "observed"
    assert trainer.result_line(result).endswith(
        "; evaluated on observed labels only (unknown entries do not count)"
    )
    assert result["num_test_examples"] == 4


@pytest.mark.slow
def test_predict_on_the_test_split_gives_the_evaluations_probabilities(trained, capsys):
    root, images, data_dir, config, workdir, result = trained
    out = root / "test.csv"
    assert predict.main([f"--workdir={workdir}", "--split=test", f"--out={out}"]) == 0
    assert f"wrote {out}: 4 image(s), 0 unreadable" in capsys.readouterr().out
    rows = read_csv(out)
    predicted = np.array([[float(row[c]) for c in CLASSES] for row in rows])

    # The evaluation of the trainer: its step, its batches, the best checkpoint.
    run = trained_run.open_run(workdir)
    dataset = trained_run.open_dataset(run)
    mesh = sharding.make_mesh()
    model, variables = trained_run.restore(run, mesh)
    options = configuration.pipeline_options(config, mesh.size)
    reader = input_pipeline.BatchReader(dataset, input_pipeline.eval_plan(dataset, "test", options), options)
    with input_pipeline.Stream(reader) as batches:
        from bridgegap_jax.run import steps

        probs, labels, bce = evaluation.predict(steps.jit_eval_step(model, mesh), variables, batches, mesh, 4)
    print(
        f"predict vs evaluation on the test split: max abs difference {np.abs(predicted - probs).max():.2e}"
    )
    np.testing.assert_allclose(predicted, probs, rtol=0, atol=1e-6)  # 7 significant digits in the file
    assert [row["file_name"] for row in rows] == [image_name(i, "test") for i in range(20, 24)]
    assert evaluation.summarize(dataset, probs, labels, bce)["map"] == pytest.approx(
        result["test_map"], abs=1e-9
    )


@pytest.fixture(scope="module")
def predicted(trained):
    """predict on the whole image folder, every class's probability: (CSV path, stdout, stderr)."""
    import contextlib
    import io

    root, images, data_dir, config, workdir, result = trained
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert predict.main([f"--workdir={workdir}", f"--images={images}", f"--out={root / 'all.csv'}"]) == 0
    return root / "all.csv", out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_predict_on_new_images_lists_the_unreadable_and_draws_the_maps(trained, predicted, capsys):
    from helpers import png_size

    from bridgegap_jax.explain.cam_figures import figure_size_px

    root, images, data_dir, config, workdir, result = trained
    path, out, err = predicted
    assert err == ""  # no progress line: stderr is not a terminal
    assert f"wrote {path}: 25 image(s), 1 unreadable (listed with the reason)" in out
    rows = read_csv(path)
    assert list(rows[0]) == ["file_name", *CLASSES, "error"]
    assert (
        len(rows) == 25 and rows[0]["file_name"] == "broken.png"
    )  # sorted paths; the missing one is no file
    assert rows[0]["error"].startswith("unreadable: OpenCV could not decode") and rows[0]["cat"] == ""
    assert {row["file_name"] for row in rows[1:]} == {
        image_name(i, s) for i, s in enumerate(SPLITS_OF_IMAGES)
    }
    assert all(0 <= float(row[c]) <= 1 for row in rows[1:] for c in CLASSES)

    # A glob, the two most probable labels as lists, and their maps.
    jsonl, cams = root / "webp.jsonl", root / "cams"
    glob = f"--images={images}/**/deeper/*.WebP"  # sub/deeper/: images 2 and 14
    assert predict.main([f"--workdir={workdir}", glob, f"--out={jsonl}", "--top_k=2", f"--cams={cams}"]) == 0
    with open(jsonl) as f:
        listed = [json.loads(line) for line in f]
    assert [row["file_name"] for row in listed] == sorted(
        str(images / image_name(i, "train")) for i in (2, 14)
    )
    assert all(len(row["labels"]) == 2 and set(row["labels"]) <= set(CLASSES) for row in listed)
    assert all(row["probabilities"] == sorted(row["probabilities"], reverse=True) for row in listed)
    figures = sorted(os.listdir(cams))
    assert figures == [f"00000{r}_{os.path.basename(row['file_name'])}.png" for r, row in enumerate(listed)]
    assert png_size(cams / figures[0]) == figure_size_px(2, 1)  # a row for each of the 2 labels
    assert "2 CAM figure(s)" in capsys.readouterr().out
    assert predict.main([f"--workdir={workdir}", glob, f"--out={jsonl}"]) == 2  # an existing file is kept
    assert f"--out={jsonl} exists" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_torchvision_names_and_what_pytorch_needs(trained, capsys):
    root, images, data_dir, config, workdir, result = trained
    path = root / "model.safetensors"
    assert export.main([f"--workdir={workdir}", f"--out={path}"]) == 0
    assert (
        "the ResNet-18 trunk under torchvision's names and the CAM head for 3 classes"
        in capsys.readouterr().out
    )
    tensors, meta = read_safetensors(str(path)), read_metadata(str(path))
    assert tensors["conv1.weight"].shape == (64, 3, 7, 7) and tensors[
        "layer2.0.downsample.0.weight"
    ].shape == (128, 64, 1, 1)
    assert (
        tensors["head.weight"].shape == (3, 512, 1, 1)
        and tensors["layer4.1.bn2.num_batches_tracked"].dtype == np.int64
    )
    assert (
        "fc.weight" not in tensors and len(tensors) == 120 + 2
    )  # resnet18().state_dict() less fc, plus the head
    assert json.loads(meta["class_names"]) == CLASSES and (
        meta["alpha"],
        meta["image_size"],
        meta["depth"],
    ) == ("5.0", "64", "18")
    assert meta["resize"] == "bilinear" and json.loads(meta["mean"]) == [0.485, 0.456, 0.406]


@pytest.mark.slow
def test_the_readme_pytorch_code_gives_predicts_probabilities(trained, predicted, monkeypatch):
    root, images, data_dir, config, workdir, result = trained
    names = [image_name(i, "train") for i in range(4)]  # JPEG (turned by its EXIF orientation), PNG and WebP
    run_readme_pytorch(workdir, root / "model.safetensors", images, names, predicted[0], monkeypatch)


def test_listed_predictions_read_back_as_a_label_table(tmp_path):
    """--top_k / --threshold rows in CSV are a `labels` column as `prepare folder` reads it."""
    from bridgegap_jax.prepare import table

    path = tmp_path / "listed.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        rows = predict.RowWriter(f, ".csv", CLASSES, top_k=2, threshold=0.3)
        rows.write("a, b.jpg", np.array([0.9, 0.2, 0.35], np.float32))
        rows.write("c.png", np.array([0.1, 0.95, 0.5], np.float32))
        rows.write("d.png", None, "unreadable: OpenCV could not decode the bytes")
    assert read_csv(path)[0] == {
        "file_name": "a, b.jpg",
        "labels": "bird, small|dog",
        "probabilities": "0.9|0.35",
        "error": "",
    }
    read = table.read_table(str(path), CLASSES)
    assert read.file_names == ["a, b.jpg", "c.png", "d.png"] and read.ignored_columns == [
        "probabilities",
        "error",
    ]
    np.testing.assert_array_equal(read.labels, [[1, -1, 1], [-1, 1, 1], [-1, -1, -1]])
