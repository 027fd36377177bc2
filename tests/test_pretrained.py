"""ImageNet weight conversion: safetensors reader, key map checks, the orbax trunk checkpoint, the
loader, and the errors a user can cause. ResNet-18 shapes keep files small; torch only for .pth."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from bridgegap_jax.model import pretrained
from bridgegap_jax.model.resnet import CAMClassifier


def write_safetensors(path, tensors, bf16=()):
    """A minimal safetensors writer (the format, not the package): names in `bf16` are stored as BF16."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        if name in bf16:
            data, dtype = (
                (np.asarray(array, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes(),
                "BF16",
            )
        else:
            array = np.asarray(array)
            dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[array.dtype]
            data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(np.shape(array)),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))


def torchvision_state_dict(depth, seed=0):
    """A random state dict with torchvision's names and shapes (built from the Flax tree, inverted)."""
    rng = np.random.default_rng(seed)
    leaf = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }
    module = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
    state = {}
    for collection, tree in pretrained.expected_trunk(depth).items():
        for path, shape in flatten_dict(tree).items():
            names = [p.replace("_", ".") if p.startswith("layer") else module.get(p, p) for p in path[:-1]]
            shape = shape.shape
            if path[-1] == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
            value = rng.uniform(0.5, 1.5, shape) if path[-1] == "var" else rng.normal(0, 0.1, shape)
            state[".".join(names + [leaf[path[-1]]])] = value.astype(np.float32)
            if path[-1] == "var":
                state[".".join(names + ["num_batches_tracked"])] = np.array(7, np.int64)
    features = state["layer4.1.bn2.weight"].shape[0]
    state["fc.weight"] = rng.normal(0, 0.01, (1000, features)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


@pytest.fixture(scope="module")
def resnet18_state():
    return torchvision_state_dict(18)


def test_safetensors_reader_round_trip(tmp_path):
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([3, -1], np.int64),
        "c": np.array([1.5, -2.25, 1e-3], np.float32),
    }
    write_safetensors(tmp_path / "t.safetensors", tensors, bf16={"c"})
    read = pretrained.read_safetensors(str(tmp_path / "t.safetensors"))
    assert set(read) == {"a", "b", "c"}
    np.testing.assert_array_equal(read["a"], tensors["a"])
    np.testing.assert_array_equal(read["b"], tensors["b"])
    np.testing.assert_allclose(read["c"], tensors["c"], rtol=1e-2)  # bfloat16 keeps 8 bits of mantissa
    assert read["c"].dtype == np.float32


def test_key_map():
    assert pretrained.flax_path("conv1.weight") == ("params", ("conv1", "kernel"))
    assert pretrained.flax_path("bn1.running_var") == ("batch_stats", ("bn1", "var"))
    assert pretrained.flax_path("layer3.22.bn2.weight") == ("params", ("layer3_22", "bn2", "scale"))
    assert pretrained.flax_path("layer2.0.downsample.0.weight") == (
        "params",
        ("layer2_0", "downsample_conv", "kernel"),
    )
    assert pretrained.flax_path("layer2.0.downsample.1.running_mean") == (
        "batch_stats",
        ("layer2_0", "downsample_bn", "mean"),
    )
    assert pretrained.flax_path("fc.weight") is None
    for bad in ("layer1.0.conv1.bias", "head.weight", "layer1.0.downsample.2.weight", "bn1.momentum"):
        with pytest.raises(KeyError):
            pretrained.flax_path(bad)


def test_convert_fills_every_leaf_and_transposes(resnet18_state):
    trunk = pretrained.convert_torchvision(resnet18_state, 18)
    flat = flatten_dict(trunk)
    assert set(flat) == set(flatten_dict(pretrained.expected_trunk(18)))
    np.testing.assert_array_equal(
        trunk["params"]["layer2_0"]["downsample_conv"]["kernel"],
        resnet18_state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(trunk["batch_stats"]["bn1"]["var"], resnet18_state["bn1.running_var"])
    assert pretrained.infer_depth(resnet18_state) == 18


@pytest.mark.parametrize(
    "change,expected",
    [
        (
            lambda s: s.update({"layer1.0.conv9.weight": s["layer1.0.conv1.weight"]}),
            "unknown key(s): layer1.0.conv9.weight",
        ),
        (lambda s: s.pop("layer3.1.bn2.running_mean"), "not filled: batch_stats/trunk/layer3_1/bn2/mean"),
        (
            lambda s: s.update({"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}),
            "conv1.weight (64, 3, 3, 3) -> params/trunk/conv1/kernel (7, 7, 3, 64)",
        ),
    ],
)
def test_convert_names_what_is_wrong(resnet18_state, change, expected):
    state = dict(resnet18_state)
    change(state)
    with pytest.raises(ValueError, match="not a torchvision ResNet-18") as info:
        pretrained.convert_torchvision(state, 18)
    assert expected in str(info.value)
    assert "resnet50-0676ba61.pth" in str(info.value)  # where to get the right file


@pytest.mark.slow
def test_convert_command_then_load_into_the_model(tmp_path, resnet18_state, capsys):
    source = tmp_path / "model.safetensors"
    write_safetensors(source, resnet18_state)
    out = tmp_path / "resnet18_tv"
    assert pretrained.main([f"--source={source}", f"--out={out}"]) == 0
    assert f"--config.model.pretrained={out}" in capsys.readouterr().out
    info = pretrained.read_info(str(out))
    assert (
        info["depth"] == 18
        and info["dropped"] == ["fc.bias", "fc.weight"]
        and len(info["source_sha256"]) == 64
    )

    model = CAMClassifier(num_classes=5, depth=18)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8)))()
    loaded = pretrained.load_pretrained_trunk(str(out), variables)
    expected = pretrained.convert_torchvision(resnet18_state, 18)
    for collection in ("params", "batch_stats"):
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(loaded[collection]["trunk"]),
            jax.tree.leaves(expected[collection]),
        ):
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(
        loaded["params"]["head"]["kernel"], variables["params"]["head"]["kernel"]
    )  # head kept
    model.apply(loaded, jnp.zeros((2, 32, 32, 3), jnp.uint8))  # a usable model

    # The same checkpoint does not fit another depth: the error says which leaves and what to do.
    other = jax.eval_shape(
        lambda: CAMClassifier(num_classes=5, depth=34).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8)
        )
    )
    with pytest.raises(ValueError, match="ResNet-18 trunk .* does not fit this model .*layer2_2"):
        pretrained.load_pretrained_trunk(str(out), other)
    # --depth is checked against the file; an existing --out is never overwritten.
    assert pretrained.main([f"--source={source}", f"--out={tmp_path / 'x'}", "--depth=50"]) == 2
    assert "holds ResNet-18 weights, not ResNet-50" in capsys.readouterr().err
    assert pretrained.main([f"--source={source}", f"--out={out}"]) == 2
    assert "exists" in capsys.readouterr().err


def test_missing_files_say_where_to_get_them(tmp_path, capsys):
    assert pretrained.main([f"--source={tmp_path / 'resnet50-0676ba61.pth'}", f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert (
        "https://download.pytorch.org/models/resnet50-0676ba61.pth" in err and "timm/resnet50.tv_in1k" in err
    )
    assert "python -m bridgegap_jax.model.pretrained --source=FILE" in err

    with pytest.raises(FileNotFoundError) as info:
        pretrained.load_pretrained_trunk(str(tmp_path / "resnet101_v1"), {})
    message = str(info.value)
    assert "resnet101-63fe2227.pth" in message and f"--out={tmp_path / 'resnet101_v1'}" in message


def test_truncated_torchvision_download_is_detected(tmp_path):
    path = tmp_path / "resnet50-0676ba61.pth"
    path.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pretrained.read_source(str(path))


def test_pth_source_equals_safetensors_source(tmp_path):
    torch = pytest.importorskip(
        "torch", reason="torch is a test extra (pip install -e '.[torch]'); .pth sources need it"
    )
    torchvision = pytest.importorskip("torchvision", reason="torchvision is a test extra")
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    write_safetensors(tmp_path / "resnet18.safetensors", {k: v.numpy() for k, v in state.items()})
    from_pth = pretrained.read_source(str(tmp_path / "resnet18.pth"))
    from_st = pretrained.read_source(str(tmp_path / "resnet18.safetensors"))
    assert set(from_pth) == set(from_st)
    for name in from_pth:
        np.testing.assert_array_equal(from_pth[name], from_st[name])
