"""`prepare folder` before and around the images: the label table (every layout and quirk), the splits,
the label encoding and each split's evaluation, and a bad table's one-line error that writes nothing."""

import csv
import json
import os

import numpy as np
import pytest

from bridgegap_jax.data import catalog
from bridgegap_jax.prepare import cli, folder, table
from bridgegap_jax.run import configuration


def write(path, text, bom=False, crlf=False):
    data = text.replace("\n", "\r\n") if crlf else text
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write(data)
    return str(path)


# ----------------------------------------------------------------------------------------------
# Tables that read
# ----------------------------------------------------------------------------------------------
def test_one_column_per_class_with_bom_crlf_and_quoted_commas(tmp_path):
    path = write(
        tmp_path / "labels.csv",
        'file_name,cat,"bird, small",dog\n"a/one, two.JPG",1,0,\n./b.png,-1, 1 ,0\n\n"c.webp",,,1\n',
        bom=True,
        crlf=True,
    )
    t = table.read_table(path)
    assert (t.format, t.layout, t.classes) == ("csv", "columns", ["cat", "bird, small", "dog"])
    assert t.file_names == ["a/one, two.JPG", "b.png", "c.webp"] and t.lines == [2, 3, 5]
    np.testing.assert_array_equal(t.labels, [[1, 0, -1], [-1, 1, 0], [-1, -1, 1]])
    assert t.splits is None and t.merged == 0


def test_labels_column_with_negatives_merges_repeated_files_and_ignores_other_columns(tmp_path):
    path = write(
        tmp_path / "labels.tsv",
        "file_name\tlabels\tnegatives\tsplit\tnote\n"
        "x.jpg\tdog| cat \t\tTrain\tfirst\n"
        "y.jpg\t\tcat\ttest\t\n"
        "x.jpg\t\tbird\ttrain\tagain\n",  # the same file again: its known labels join the first row's
    )
    t = table.read_table(path)
    assert (t.layout, t.classes, t.file_names) == ("lists", ["bird", "cat", "dog"], ["x.jpg", "y.jpg"])
    np.testing.assert_array_equal(t.labels, [[0, 1, 1], [-1, 0, -1]])
    assert t.splits == ["train", "test"] and t.merged == 1 and t.ignored_columns == ["note"]


def test_json_lines_take_lists_or_strings_and_class_names_fix_the_order(tmp_path):
    path = write(
        tmp_path / "metadata.jsonl",
        '{"file_name": "a.png", "labels": ["b", "a"]}\n\n{"file_name": "b.png", "labels": "c", "negatives": null}\n',
    )
    names = write(tmp_path / "classes.txt", "c\nb\na\nd\n")
    t = table.read_table(path, folder.read_class_names(names))
    assert t.classes == ["c", "b", "a", "d"]
    np.testing.assert_array_equal(t.labels, [[-1, 1, 1, -1], [1, -1, -1, -1]])
    columns = write(
        tmp_path / "columns.jsonl",
        '{"file_name": "a.png", "x": 1, "y": null}\n{"file_name": "b.png", "y": "0", "x": -1}\n',
    )
    t = table.read_table(columns)
    assert t.classes == ["x", "y"]
    np.testing.assert_array_equal(t.labels, [[1, -1], [-1, 0]])
    spaced = write(tmp_path / "spaced.csv", "file_name,labels\na.png,haze primary\n")
    assert table.read_table(spaced, separator=" ").classes == ["haze", "primary"]  # Kaggle-style tags


# ----------------------------------------------------------------------------------------------
# Tables that do not: one line naming file, line and column; nothing written
# ----------------------------------------------------------------------------------------------
BAD_TABLES = {
    "unknown class name in a list": (
        "labels.csv",
        "file_name,labels\na.png,cat\nb.png,cat|zebra\n",
        "labels.csv, line 3, column 'labels': class 'zebra' is not one of the 2 classes of --class_names",
    ),
    "a cell that is not 1/0/-1/empty": (
        "labels.csv",
        "file_name,cat,dog\na.png,1,0\nb.png,yes,1\n",
        "labels.csv, line 3, column 'cat': 'yes' is not 1 (positive), 0 (negative), -1 or empty (unknown)",
    ),
    "a duplicate file_name with conflicting labels": (
        "labels.csv",
        "file_name,cat,dog\na.png,1,0\nb.png,0,1\n./a.png,0,\n",
        "labels.csv, lines 2 and 4: file_name 'a.png' is listed twice with conflicting labels (class 'cat': 1 and 0)",
    ),
    "no positives at all": (
        "labels.csv",
        "file_name,cat,dog\na.png,0,\nb.png,-1,0\n",
        "labels.csv: no row has a positive label (2 images, 2 classes)",
    ),
    "an empty split": (
        "labels.csv",
        "file_name,labels,split\na.png,cat,train\nb.png,dog,validation\nc.png,cat,train\n",
        "labels.csv: column 'split' puts no row in 'test': training needs images in train, validation and test",
    ),
    "a header without file_name": (
        "labels.csv",
        "image,cat\na.png,1\n",
        "labels.csv, line 1: the header has no file_name column (it has: image, cat)",
    ),
    "a class both positive and negative": (
        "labels.csv",
        "file_name,labels,negatives\na.png,cat,cat\n",
        "labels.csv, line 2, column 'negatives': class 'cat' is also listed as positive",
    ),
    "a field too many": (
        "labels.csv",
        "file_name,labels\na.png,cat,dog\n",
        "labels.csv, line 2: 3 fields, but the header has 2 (quote a field that holds the delimiter)",
    ),
    "a path outside the image folder": (
        "labels.csv",
        "file_name,labels\n../secret.png,cat\n",
        "labels.csv, line 2, column 'file_name': '../secret.png' is not a path inside the image folder",
    ),
    "an unknown split": (
        "labels.csv",
        "file_name,labels,split\na.png,cat,val\n",
        "labels.csv, line 2, column 'split': 'val' is not one of train, validation, test",
    ),
    "a line that is not JSON": (
        "labels.jsonl",
        '{"file_name": "a.png", "labels": ["cat"]}\n{"file_name": "b.png", labels: []}\n',
        "labels.jsonl, line 2: not JSON",
    ),
    "a table of another format": (
        "labels.xlsx",
        "file_name,cat\n",
        "labels.xlsx: the table must be a .csv, .tsv or .jsonl",
    ),
    "lists joined by ';'": (
        "labels.csv",
        "file_name,labels\na.png,cat\nb.png,cat;dog\nc.png,dog;bird\nd.png,bird\n",
        "labels.csv, line 3, column 'labels': 'cat;dog' looks like class names joined by ';', not by the "
        "default '|' (split at ';', the table's 4 names are 3); pass --label_separator=';' (or "
        "--label_separator='|' if ';' belongs inside the names)",
    ),
    "lists joined by ','": (
        "labels.tsv",
        "file_name\tlabels\na.png\tcat\nb.png\tdog\nc.png\tcat,dog\n",
        "labels.tsv, line 4, column 'labels': 'cat,dog' looks like class names joined by ','",
    ),
    "negatives joined by '/'": (
        "labels.jsonl",
        '{"file_name": "a.png", "labels": ["cat"], "negatives": "dog/bird"}\n'
        '{"file_name": "b.png", "labels": ["dog", "bird"]}\n',
        "labels.jsonl, line 1, column 'negatives': 'dog/bird' looks like class names joined by '/'",
    ),
}


@pytest.mark.parametrize("case", BAD_TABLES, ids=list(BAD_TABLES))
def test_a_bad_table_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    name, text, expected = BAD_TABLES[case]
    (tmp_path / "images").mkdir()
    path = write(tmp_path / name, text)
    classes = (
        ["--class_names=" + write(tmp_path / "classes.txt", "cat\ndog\n")] if "class name" in case else []
    )
    data_dir = tmp_path / "data"
    code = cli.main(
        [
            "folder",
            f"--images={tmp_path / 'images'}",
            f"--labels={path}",
            "--name=bad",
            f"--data_dir={data_dir}",
            *classes,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert f"{tmp_path}{os.sep}{expected}" in err  # the file as given, the line, the column, what is wrong
    assert not data_dir.exists()  # nothing written


def test_a_separator_given_is_trusted_and_names_with_commas_are_not_lists(tmp_path):
    joined = write(tmp_path / "labels.csv", "file_name,labels\na.png,cat\nb.png,cat;dog\nc.png,dog\n")
    assert table.read_table(joined, separator=";").classes == ["cat", "dog"]
    assert table.read_table(joined, separator="|").classes == ["cat", "cat;dog", "dog"]  # given: as written
    commas = write(tmp_path / "commas.csv", 'file_name,labels\na.png,"bird, small|cat"\nb.png,dog\n')
    assert table.read_table(commas).classes == ["bird, small", "cat", "dog"]  # split at ',': more names


def test_windows_backslashes_are_read_as_folders_unless_a_file_has_that_name(tmp_path, capsys):
    tiny_images(tmp_path / "images", 4)
    for i in (0, 1):
        (tmp_path / "images" / "dogs").mkdir(exist_ok=True)
        os.replace(tmp_path / "images" / f"{i}.png", tmp_path / "images" / "dogs" / f"{i}.png")
    os.replace(tmp_path / "images" / "2.png", tmp_path / "images" / "odd\\name.png")  # legal on Linux
    rows = "dogs\\0.png,a\ndogs\\1.png,b\nodd\\name.png,a\n3.png,b\ndogs/0.png,c\n"
    labels = write(tmp_path / "labels.csv", "file_name,labels,split\n" + rows.replace("\n", ",train\n"))
    t = table.read_table(labels, images=str(tmp_path / "images"))
    assert t.file_names == ["dogs/0.png", "dogs/1.png", "odd\\name.png", "3.png"] and t.merged == 1
    assert t.windows_paths == [("dogs\\0.png", "dogs/0.png"), ("dogs\\1.png", "dogs/1.png")]
    np.testing.assert_array_equal(t.labels[0], [1, -1, 1])  # the two rows of dogs/0.png, merged

    write(labels, "file_name,labels,split\ndogs\\0.png,a,train\ndogs\\1.png,b,validation\n3.png,a,test\n")
    argv = ["folder", f"--images={tmp_path / 'images'}", f"--labels={labels}", "--name=win"]
    assert cli.main([*argv, f"--data_dir={tmp_path / 'd'}", "--workers=1"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: 2 file_name(s) written with Windows backslashes, read with '/' (dogs\\0.png as dogs/0.png)"
        in out
    )
    assert "wrote 1 of 1 images" in out and "1 missing" not in out


def test_the_metadata_file_in_the_image_folder_is_the_table_without_labels(tmp_path, capsys):
    """Hugging Face's imagefolder convention: metadata.jsonl or metadata.csv beside the images."""
    images = tmp_path / "images"
    tiny_images(images, 3)
    rows = [("0.png", "a", "train"), ("1.png", "b", "validation"), ("2.png", "a", "test")]
    write(
        images / "metadata.jsonl",
        "".join(json.dumps(dict(zip(("file_name", "labels", "split"), r))) + "\n" for r in rows),
    )
    argv = ["folder", f"--images={images}", "--name=meta", "--workers=1"]
    assert cli.main([*argv, f"--data_dir={tmp_path / 'd'}"]) == 0
    out = capsys.readouterr().out
    assert f"no --labels: reading {images / 'metadata.jsonl'}, the metadata file of --images" in out
    with open(tmp_path / "d" / "bridgegap_folder_meta" / "1.0.0" / "folder_dataset.json") as f:
        description = json.load(f)
    assert description["source"]["labels"] == str(images / "metadata.jsonl")
    assert f"--labels={images / 'metadata.jsonl'}" in description["command"]  # the rebuild names it

    write(images / "metadata.csv", "file_name,labels\n0.png,a\n")
    assert cli.main([*argv, f"--data_dir={tmp_path / 'e'}"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --images={images} holds both metadata.jsonl and metadata.csv: name the table to read with "
        f"--labels={images / 'metadata.jsonl'}\n"
    )
    for name in ("metadata.jsonl", "metadata.csv"):
        os.remove(images / name)
    assert cli.main([*argv, f"--data_dir={tmp_path / 'e'}"]) == 2
    assert "needs --labels, or a metadata.jsonl or metadata.csv in --images=" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_flags_of_prepare_folder_are_checked(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    labels = write(tmp_path / "labels.csv", "file_name,labels\na.png,cat\n")
    for argv, expected in (
        (["--name=My-Data"], "--name=My-Data: 'My-Data' is not a dataset name: use lower-case letters"),
        (["--name=ok", "--test_fraction=1.5"], "--test_fraction=1.5 must be in [0, 1)"),
        (["--name=ok", "--validation_fraction=0.5", "--test_fraction=0.5"], "leave no training images"),
    ):
        assert (
            cli.main(
                [
                    "folder",
                    f"--images={tmp_path / 'images'}",
                    f"--labels={labels}",
                    f"--data_dir={tmp_path / 'd'}",
                    *argv,
                ]
            )
            == 2
        )
        assert expected in capsys.readouterr().err
    assert cli.main(["voc", f"--data_dir={tmp_path / 'd'}", "--labels=x.csv"]) == 2
    assert "--labels only apply to `prepare folder`" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# Splits, encoding, evaluation
# ----------------------------------------------------------------------------------------------
def test_the_seeded_split_depends_on_the_names_only_and_keeps_what_was_stored():
    names = [f"img_{i}.jpg" for i in range(100)]
    splits = folder.seeded_splits(names, 0, 0.1, 0.2, {})
    assert [splits.count(s) for s in ("train", "validation", "test")] == [70, 10, 20]
    shuffled = names[::-1]
    assert folder.seeded_splits(shuffled, 0, 0.1, 0.2, {}) == splits[::-1]  # not the row order
    assert folder.seeded_splits(names, 1, 0.1, 0.2, {}) != splits  # the seed
    grown = names + [f"new_{i}.jpg" for i in range(20)]
    again = folder.seeded_splits(grown, 0, 0.1, 0.2, dict(zip(names, splits)))
    assert again[:100] == splits  # nothing moves between train and test
    assert [again.count(s) for s in ("train", "validation", "test")] == [84, 12, 24]
    assert folder.seeded_splits(names[:3], 0, 0.1, 0.1, {}).count("train") == 1  # one image each at least


@pytest.mark.parametrize(
    "labels,mode",
    [([[1, 0], [0, 1]], "all"), ([[1, -1], [0, 1]], "observed"), ([[1, -1], [-1, 1]], "unobserved_negative")],
)
def test_evaluation_mode(labels, mode):
    assert folder.evaluation_mode(np.array(labels)) == mode


def tiny_images(root, count):
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")


def test_a_single_positive_table_is_evaluated_with_unknown_as_negative_and_a_rerun_keeps_the_split(
    tmp_path, capsys
):
    tiny_images(tmp_path / "images", 12)
    rows = "".join(f"{i}.png,{'abc'[i % 3]}\n" for i in range(10))
    labels = write(tmp_path / "labels.csv", "file_name,labels\n" + rows)
    argv = [
        "folder",
        f"--images={tmp_path / 'images'}",
        f"--labels={labels}",
        "--name=sp",
        f"--data_dir={tmp_path / 'd'}",
        "--workers=1",
    ]
    assert cli.main(argv + ["--test_fraction=0.2"]) == 0
    out = capsys.readouterr().out
    assert (
        "label encoding: single_positive" in out
        and "test: evaluation on unknown labels counted as negative" in out
    )
    dataset = catalog.open_dataset("folder:sp", str(tmp_path / "d"))
    assert (dataset.label_encoding, dataset.evaluation) == (
        "single_positive",
        dict.fromkeys(("validation", "test"), "unobserved_negative"),
    )
    assert dataset.unobserved_value == 0 and dataset.eval_mask(np.zeros((1, 3))) is None  # every entry counts
    source = dataset.source("train")
    record = source[0]
    assert record["labels"].tolist() == record["labels_obs"].tolist() and sorted(
        record["labels"].tolist()
    ) == [0, 0, 1]
    assert catalog.open_dataset(dataset.directory, "unused").split_sizes == dataset.split_sizes  # by its path

    def stored():
        with open(os.path.join(dataset.directory, folder.SPLIT_FILE), newline="") as f:
            return {row["file_name"]: row["split"] for row in csv.DictReader(f)}

    before = stored()
    assert cli.main(argv + ["--test_fraction=0.2"]) == 2  # no --overwrite: refused, the dataset kept
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    write(labels, "file_name,labels\n" + rows + "10.png,a\n11.png,b\n")
    assert cli.main(argv + ["--test_fraction=0.2", "--overwrite"]) == 0
    assert "kept the stored split of 10 image(s)" in capsys.readouterr().out
    after = stored()
    assert {name: after[name] for name in before} == before and len(after) == 12
    with open(os.path.join(dataset.directory, "folder_dataset.json")) as f:
        description = json.load(f)
    assert description["splits"]["test"]["rows"] == sum(s == "test" for s in after.values())


def test_configs_folder_needs_the_dataset_named_and_checks_it():
    from configs import folder as folder_config

    config = folder_config.get_config()
    for name, expected in (
        ("", "config.data.name='': is not set: give one of demo"),  # configs/folder.py leaves it to the user
        ("folder:My-Data", "the NAME of folder:NAME: 'My-Data' is not a dataset name"),
        ("vocc", f"must be one of {', '.join(catalog.DATASETS)}, folder:NAME"),
    ):
        config.data.name = name
        with pytest.raises(configuration.ConfigError, match=expected):
            configuration.check(config)
    for name in ("folder:my_data", "runs/../data/bridgegap_folder_x/1.0.0", "~/data/x"):
        config.data.name = name
        configuration.check(config)
