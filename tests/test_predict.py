"""predict on a run of the tiny demo's size (random weights: no training): every probability, the
top-k lists, an unreadable image and the CAM figures. tests/test_own_data.py runs it after a real
training, on a folder with every quirk, against the evaluation's probabilities."""

import json

import numpy as np
from helpers import make_run, png_size, read_csv
from PIL import Image

from bridgegap_jax import predict
from bridgegap_jax.explain.cam_figures import figure_size_px


def test_top_k_lists_are_the_most_probable_classes_and_each_gets_its_map(tiny_config, tmp_path, capsys):
    workdir = make_run(tmp_path / "run", tiny_config)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    every, listed, cams = tmp_path / "every.csv", tmp_path / "top2.jsonl", tmp_path / "cams"
    assert predict.main([f"--workdir={workdir}", f"--images={folder}", f"--out={every}"]) == 0
    flags = [f"--workdir={workdir}", f"--images={folder}", f"--out={listed}", "--top_k=2", f"--cams={cams}"]
    assert predict.main(flags) == 0
    assert "4 image(s), 1 unreadable" in capsys.readouterr().out

    rows = read_csv(every)
    classes = [name for name in rows[0] if name not in ("file_name", "error")]
    assert [row["file_name"] for row in rows] == ["0.png", "1.png", "2.png", "broken.png"]
    assert rows[3]["error"].startswith("unreadable") and rows[3][classes[0]] == ""
    with open(listed) as f:
        lines = [json.loads(line) for line in f]
    assert lines[3] == {"file_name": "broken.png", "error": rows[3]["error"]}
    for row, line in zip(rows[:3], lines):
        probabilities = np.array([float(row[c]) for c in classes])
        assert np.all((0 <= probabilities) & (probabilities <= 1)) and row["error"] == ""
        top2 = np.argsort(-probabilities, kind="stable")[:2]
        assert line["labels"] == [classes[c] for c in top2]
        np.testing.assert_allclose(line["probabilities"], probabilities[top2], rtol=1e-6)
    figures = sorted(p.name for p in cams.iterdir())
    assert figures == ["000000_0.png.png", "000001_1.png.png", "000002_2.png.png"]
    assert png_size(cams / figures[0]) == figure_size_px(2, 1)  # a row for each of the 2 labels
