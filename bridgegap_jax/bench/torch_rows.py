"""The PyTorch rows, each in its own child process: torch_reference.py's step as the reference
runs it (torch-ref), with bf16 autocast, channels_last, fused Adam and cudnn.benchmark (torch-amp),
and with torch.compile on top (torch-best); the variants are described in cli.py.

Inputs are ImageNet-normalised float32 NCHW tensors, as the reference's DataLoader delivers them.
torch is imported here, in the child, so that a missing PyTorch makes a skipped row, not a failure.
"""

from __future__ import annotations

from bridgegap_jax.bench.rows import HEAD_LR_MULT, LR, SCHEME, Row, median_seconds, synthetic_batch


def measure_torch(spec: dict) -> Row:
    """A PyTorch variant's training step (and eval) on synthetic data on the device, or a skipped
    row when PyTorch is not installed."""
    variant, batch, m = spec["variant"], spec["batch"], spec["model"]
    amp = variant in ("torch-amp", "torch-best")
    row = Row(variant, batch)
    try:
        import torch
        import torchvision  # noqa: F401 - the reference model

        from bridgegap_jax.bench import torch_reference
    except ImportError as e:
        row.note, row.skipped = f"skipped: PyTorch is not installed ({e})", True
        return row

    row.precision = "bf16 autocast" if amp else "fp32"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    row.environment = (
        f"torch {torch.__version__} on {name} (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
        f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32})"
    )
    torch.backends.cudnn.benchmark = amp  # the reference leaves it off; the tuned setups turn it on
    memory_format = torch.channels_last if amp else torch.contiguous_format
    torch.manual_seed(0)
    model = torch_reference.CAMClassifier(m["depth"], m["num_classes"], m["alpha"])
    model = model.to(device, memory_format=memory_format)
    fused = True if amp and device.type == "cuda" else None
    optimizer = torch_reference.make_optimizer(model, LR, HEAD_LR_MULT, fused=fused)
    net = torch.compile(model) if variant == "torch-best" else model
    images, observed, k = synthetic_batch(batch, m["size"], m["num_classes"])
    x = torch_reference.normalize_uint8(images).to(device).contiguous(memory_format=memory_format)
    y = torch.as_tensor(observed).to(device)
    autocast = torch.bfloat16 if amp else None
    sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)

    def train_once():
        model.train()
        return torch_reference.train_step(
            net, optimizer, x, y, k, scheme=SCHEME, unobserved_value=0, autocast_dtype=autocast
        )

    seconds, warm = median_seconds(train_once, sync, spec["warmup"], spec["steps"], spec["repeats"])
    row.train_ms, row.compile_s = 1000 * seconds, warm
    if device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    if spec["eval"]:
        model.eval()
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast or torch.float32, enabled=amp),
        ):
            seconds, _ = median_seconds(
                lambda: torch.sigmoid(net(x)[0]), sync, spec["warmup"], spec["steps"], spec["repeats"]
            )
        row.eval_ms = 1000 * seconds
    return row
