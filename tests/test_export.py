"""export: torchvision's names as the exact inverse of pretrained's key map (any width and depth, back
through `pretrained` bit for bit), the safetensors writer, the refusal of widths torchvision cannot
build, and (with the torch extra) the README's PyTorch code on a ResNet-50 giving predict's numbers."""

import os

import jax
import numpy as np
import pytest
from helpers import make_run, one_line_error, random_variables, run, run_readme_pytorch

from bridgegap_jax import export
from bridgegap_jax.model import pretrained
from bridgegap_jax.model.resnet import CAMClassifier
from bridgegap_jax.model.safetensors_file import read_metadata, read_safetensors
from bridgegap_jax.run import configuration


def random_trunk_variables(model, seed=0):
    """Random weights with BatchNorm statistics and affine terms that matter (a swap would show)."""
    variables = random_variables(model, seed=seed)
    rng = np.random.default_rng(seed + 1)

    def vary(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == "mean":
            return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
        return leaf

    return jax.tree_util.tree_map_with_path(vary, variables)


@pytest.mark.parametrize("depth,width", [(18, 8), (50, 16)])
def test_export_then_pretrained_gives_back_the_trunk_bit_for_bit(depth, width, tmp_path):
    model = CAMClassifier(num_classes=3, depth=depth, width=width)
    variables = random_trunk_variables(model)
    tensors = export.torchvision_state_dict(variables, trunk_only=True)
    assert "head.weight" not in tensors and tensors["conv1.weight"].shape == (width, 3, 7, 7)
    for (
        name
    ) in tensors:  # every name is one that pretrained maps (or ignores), and back to where it came from
        assert name.endswith(".num_batches_tracked") or pretrained.flax_path(name) is not None
    path = tmp_path / "trunk.safetensors"
    export.write_safetensors(str(path), tensors, {"note": "a narrow trunk"})
    assert pretrained.main([f"--source={path}", f"--out={tmp_path / 'converted'}"]) == 0
    assert pretrained.read_info(str(tmp_path / "converted"))["width"] == width
    fresh = jax.tree.map(np.zeros_like, variables)
    loaded = pretrained.load_pretrained_trunk(str(tmp_path / "converted"), fresh)
    for collection in ("params", "batch_stats"):
        for (key, a), b in zip(
            jax.tree_util.tree_leaves_with_path(loaded[collection]["trunk"]),
            jax.tree.leaves(variables[collection]["trunk"]),
        ):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), jax.tree_util.keystr(key)


def test_the_head_is_a_1x1_convolution_in_pytorchs_layout():
    model = CAMClassifier(num_classes=5, depth=18, width=8)
    variables = random_variables(model)
    tensors = export.torchvision_state_dict(variables)
    kernel = np.asarray(variables["params"]["head"]["kernel"])  # (1, 1, 64, 5): HWIO
    assert tensors["head.weight"].shape == (5, 64, 1, 1)
    np.testing.assert_array_equal(tensors["head.weight"][:, :, 0, 0], kernel[0, 0].T)
    np.testing.assert_array_equal(tensors["head.bias"], variables["params"]["head"]["bias"])
    assert list(tensors) == sorted(tensors)
    with pytest.raises(KeyError, match="has no torchvision name"):
        pretrained.torch_name("params", ("layer1_0", "conv1", "bias"))


def test_safetensors_files_are_written_whole_and_never_replaced(tmp_path):
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array(7, np.int64)}
    path = tmp_path / "x.safetensors"
    export.write_safetensors(str(path), tensors, {"k": "v"})
    read = read_safetensors(str(path))
    assert read["b"].tolist() == tensors["b"].tolist() and read["a"].dtype == np.int64 and read["a"] == 7
    assert read_metadata(str(path)) == {"k": "v"}
    with open(path, "rb") as f:
        assert (8 + int.from_bytes(f.read(8), "little")) % 8 == 0  # the data starts 8-byte aligned
    with pytest.raises(FileExistsError, match="exists; choose another --out"):
        export.write_safetensors(str(path), {"c": np.zeros(1, np.float32)}, {})
    assert set(read_safetensors(str(path))) == {"a", "b"} and os.listdir(tmp_path) == ["x.safetensors"]
    with pytest.raises(ValueError, match="metadata must map str to str"):
        export.write_safetensors(str(tmp_path / "y.safetensors"), tensors, {"k": 1})
    assert os.listdir(tmp_path) == ["x.safetensors"]  # no temporary file left behind
    export.write_safetensors(str(path), {"c": np.zeros(1, np.float32)}, {}, overwrite=True)
    assert set(read_safetensors(str(path))) == {"c"}
    safetensors = pytest.importorskip(
        "safetensors.numpy", reason="the safetensors package comes with the torch extra"
    )
    assert safetensors.load_file(str(path))["c"].tolist() == [0.0]  # the reference reader takes the file too


def test_export_refuses_a_width_torchvision_cannot_build(tiny_config, tmp_path):
    workdir = make_run(tmp_path / "narrow", tiny_config)  # the tiny demo: width 8
    message = one_line_error(
        run("-m", "bridgegap_jax.export", f"--workdir={workdir}", f"--out={tmp_path / 'm.safetensors'}")
    )
    assert "trained a ResNet of width 8 (config.model.width), and torchvision builds only width 64" in message
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_the_readme_pytorch_code_on_a_resnet50_gives_predicts_probabilities(
    tiny_config, tmp_path, monkeypatch
):
    """A random ResNet-50 at 64x64 (a 2x2 CAM grid), BatchNorm statistics that matter, the head scaled
    so that the probabilities spread over (0, 1) rather than sit at 0 or 1."""
    pytest.importorskip("torch", reason="the PyTorch side needs the torch extra (pip install -e '.[torch]')")
    from PIL import Image

    config = tiny_config
    config.model.depth, config.model.width, config.data.image_size = 50, 64, 64
    model = configuration.model(config, 10)
    variables = random_trunk_variables(model, seed=3)
    images = np.random.default_rng(0).integers(0, 256, (2, 80, 72, 3), np.uint8)
    logits, _ = jax.jit(model.apply)(
        variables, np.stack([np.asarray(Image.fromarray(i).resize((64, 64))) for i in images])
    )
    scale = 2.0 / float(np.std(logits))  # BoostLU is positively homogeneous: logits scale with the head
    variables["params"]["head"] = jax.tree.map(lambda x: x * scale, variables["params"]["head"])
    workdir = make_run(tmp_path / "resnet50", config, variables=variables)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    predictions = tmp_path / "p.csv"
    from bridgegap_jax import predict

    assert predict.main([f"--workdir={workdir}", f"--images={folder}", f"--out={predictions}"]) == 0
    run_readme_pytorch(
        workdir, tmp_path / "model.safetensors", folder, ["0.png", "1.png"], predictions, monkeypatch
    )


@pytest.mark.slow
def test_a_source_trunk_reaches_fine_tuning_as_it_left_the_source_model(tiny_config, demo_data_dir, tmp_path):
    """The offline stand-in for an ImageNet trunk takes a user's path: a source run's trunk exported
    (--trunk_only, torchvision's names), converted by `pretrained`, loaded by a fine-tuning run. The
    fine-tuning run's first forward pass (train mode: batch statistics) and its evaluation mode (the
    trunk's running statistics) see exactly the source model's trunk features."""
    from bridgegap_jax.base import sharding
    from bridgegap_jax.data import catalog
    from bridgegap_jax.run.rundir import RunDir
    from bridgegap_jax.run.trainer import Trainer

    source_config = tiny_config.copy_and_resolve_references()
    source_model = configuration.model(source_config, 26)  # another task: 26 classes (the letters')
    source_variables = random_trunk_variables(source_model)
    source = make_run(tmp_path / "source", source_config, num_classes=26, variables=source_variables)
    trunk_file, converted = tmp_path / "trunk.safetensors", tmp_path / "converted"
    assert export.main([f"--workdir={source}", f"--out={trunk_file}", "--trunk_only"]) == 0
    assert pretrained.main([f"--source={trunk_file}", f"--out={converted}"]) == 0

    tiny_config.model.pretrained = str(converted)
    dataset = catalog.open_dataset("demo", demo_data_dir)
    trainer = Trainer(tiny_config, RunDir(str(tmp_path / "fine_tuning")), dataset, sharding.make_mesh())
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    def trunk_features(model, variables, train):
        _, state = model.apply(
            dict(variables),
            images,
            train=train,
            mutable=["intermediates", "batch_stats"] if train else ["intermediates"],
            capture_intermediates=lambda module, method: module.name == "trunk",
        )
        return np.asarray(state["intermediates"]["trunk"]["__call__"][0])

    for train in (True, False):
        expected = trunk_features(source_model, source_variables, train)
        got = trunk_features(trainer.model, trainer.state.model_vars(), train)
        assert got.shape == expected.shape and np.abs(expected).max() > 0
        np.testing.assert_array_equal(got, expected)
