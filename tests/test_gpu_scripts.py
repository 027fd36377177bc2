"""The GPU training script's table (progress lines -> images/s, the markdown it writes), the fake
photo-like COCO set it trains on, and the input throughput script's use of the real BatchReader."""

import importlib.util
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table_script = load_script("gpu_train_table")

# What the trainer prints (trainer.Trainer.describe and _log_train): 100 examples, batch 16 -> 7 steps,
# the last one of 4 rows; a line every 3 steps and at the end of each epoch.
TRAIN_LOG = """\
training coco: 100 images, 7 steps/epoch x 2 epochs, LL-R (delta_rel 0.005), alpha 5.0, ResNet-50, bfloat16, \
batch 16 on 1 device(s)
epoch 1/2 step 3/7 | loss 1.7917 k 0 selected 0 | 1.5 img/s | 0:00:22 elapsed
epoch 1/2 step 6/7 | loss 1.7697 k 0 selected 0 | 480.0 img/s | 0:00:22 elapsed, ETA 0:00:01
epoch 1/2 step 7/7 | loss 1.7325 k 0 selected 0 | 40.0 img/s | 0:00:22 elapsed, ETA 0:00:01
epoch 1/2: validation mAP 12.03 (best) loss 1.1669 | epoch 0:00:26 | 0:00:26 elapsed, ETA 0:00:08
epoch 2/2 step 3/7 | loss 1.6828 k 7 selected 7 | 240.0 img/s | 0:00:27 elapsed, ETA 0:00:08
epoch 2/2 step 6/7 | loss 1.6603 k 7 selected 7 | 480.0 img/s | 0:00:27 elapsed, ETA 0:00:08
epoch 2/2 step 7/7 | loss 1.6299 k 7 selected 7 | 40.0 img/s | 0:00:27 elapsed, ETA 0:00:08
epoch 2/2: validation mAP 14.02 (best) loss 1.1420 | epoch 0:00:01 | 0:00:28 elapsed, ETA 0:00:00
test: test mAP 13.26 (classes without positives dropped: 25.87) with the checkpoint of epoch 2 \
(validation mAP 14.02) | total 0:00:29
"""
SYNTHETIC_LOG = """\
ResNet-50, 80 classes, 448x448, LL-R + BoostLU alpha 5.0
jax-bf16 batch 16: 25.00 ms/step, 640.0 img/s
jax-bf16 batch 128: 100.00 ms/step, 1,280.0 img/s
jax-bf16 eval batch 128: 4,000.0 img/s
"""


def test_train_rate_skips_the_first_window_and_counts_the_short_last_batch():
    got = table_script.train_rate(TRAIN_LOG)
    # Windows after the first: 48 images in 0.1 s, 4 in 0.1 s, 48 in 0.2 s, 48 in 0.1 s, 4 in 0.1 s.
    seconds = 48 / 480 + 4 / 40 + 48 / 240 + 48 / 480 + 4 / 40
    assert got["rate"] == pytest.approx((48 + 4 + 48 + 48 + 4) / seconds)
    assert (got["steps"], got["total_steps"], got["batch"]) == (11, 14, 16)
    assert table_script.test_map(TRAIN_LOG) == 13.26


def test_train_rate_of_a_log_without_training():
    assert table_script.train_rate("error: dataset 'coco' is not prepared")["rate"] is None
    first_window_only = "\n".join(TRAIN_LOG.splitlines()[:2])
    assert table_script.train_rate(first_window_only)["rate"] is None


def test_synthetic_rates():
    assert table_script.synthetic_rates(SYNTHETIC_LOG) == {16: 640.0, 128: 1280.0}
    markdown = """\
| variant | batch | precision | train ms/step | train img/s | vs torch-ref | eval img/s |
|---|---|---|---|---|---|---|
| jax-bf16 | 16 | bf16 | 25.0 | 640 | - | 2,000 |
| jax-bf16 | 256 | bf16 | out of memory | | | |
| jax-bf16 | 128 | bf16 | 100.0 | 1,280 | - | 4,000 |
"""
    assert table_script.synthetic_rates(markdown) == {16: 640.0, 128: 1280.0}


def write_part(folder, name, log, status=None):
    (folder / f"{name}.log").write_text(log)
    if status is not None:
        (folder / f"{name}.status").write_text(status)


def test_table_rows_ratio_goal_and_statuses(tmp_path):
    b128 = TRAIN_LOG.replace("batch 16 on", "batch 128 on").replace("100 images", "800 images")
    write_part(tmp_path, "train_b128", b128, "0 95")
    write_part(tmp_path, "train_b16", TRAIN_LOG, "124 150")
    write_part(tmp_path, "synthetic", SYNTHETIC_LOG, "0 80")
    write_part(tmp_path, "demo_build", "", "0 9")
    write_part(tmp_path, "demo", "Traceback\nValueError: boom\n", "1 3")
    (tmp_path / "env.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB")
    md = tmp_path / "gpu_train.md"
    table_script.main([str(tmp_path), "--md", str(md), "--title", "t"])
    text = md.read_text()
    assert text.startswith("```\nNVIDIA H100")
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert len(rows) == 3 and all(row.count("|") == 9 for row in rows)
    demo, b16, b128_row = rows
    assert "failed (exit 1): ValueError: boom" in demo and "built in 9 s (ok)" in demo
    assert "timed out after 150 s" in b16 and "| 640 |" in b16
    rate = table_script.train_rate(b128)["rate"]
    assert f"| {rate:,.0f} | 1,280 | {100 * rate / 1280:.0f}% | 13.26 | ok; synthetic ok |" in b128_row
    assert f"at batch 128: {100 * rate / 1280:.0f}%, {'met' if rate >= 1152 else 'NOT met'}." in text


def test_table_when_nothing_ran(tmp_path):
    text = table_script.table(str(tmp_path))
    assert text.count("not run") == 6 and "at batch 128: not measured." in text


def test_shell_scripts_parse():
    for name in ("gpu_train.sh", "gpu_data.sh", "fetch_gpu_wheels.sh"):
        subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", name)], check=True)


def test_fake_coco_photos(tmp_path):
    from PIL import Image

    from bridgegap_jax.prepare import fake

    made = fake.make("coco", str(tmp_path), image_size=48, num_images=12)
    assert made["missing"] == [] and made["corrupt"] == []
    images, labels = made["formatted"]["train"]
    assert len(images) == len(labels) == 12 and len(made["formatted"]["val"][0]) == 14
    for name in images[:3]:
        with Image.open(tmp_path / name) as image:
            assert image.size == (64, 48) and image.format == "JPEG"
    with pytest.raises(ValueError):
        fake.make("voc", str(tmp_path / "voc"), image_size=48)


def test_input_throughput_times_the_batch_reader():
    from bridgegap_jax.prepare.fake import photo_like_jpeg

    throughput = load_script("input_throughput")
    encoded = [photo_like_jpeg(i, (64, 48)) for i in range(3)]
    reader, batches = throughput.batch_reader(encoded, "bilinear")
    batch = reader(0)
    assert batches == 1 and batch["image"].shape == (3, 448, 448, 3) and batch["image"].dtype == np.uint8
    assert throughput.ours(encoded, "pil")() == 3
