"""A finished run's result.json beyond its scores: the environment it was measured in, and the line
that sums it up (printed at the end of a run, and when a finished workdir is run again).

    {"test_map", "test_map_with_positives", "test_groups": {"groupN": {"map", "map_with_positives"}},
     "test_loss", "num_test_examples", "best_epoch", "best_val_map", "wall_time_s", "environment"}

Scores are in percent; a mean over no class is null.
"""

from __future__ import annotations

import platform

import jax

from bridgegap_jax.data import catalog


def environment() -> dict:
    """Versions and the device, recorded with the result (numbers are exact only within one of these)."""
    import importlib.metadata as metadata

    versions = {}
    for package in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "grain",
        "opencv-python-headless",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "packages": versions,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


def percent(value: float | None) -> str:
    """A score as printed; None (a mean over no class) as n/a."""
    return "n/a" if value is None else f"{value:.2f}"


def result_line(result: dict) -> str:
    """The test result in one line: mAP, without classes that have no positives, per group."""
    groups = "".join(
        f", {key} {percent(value['map'])}" for key, value in sorted(result["test_groups"].items())
    )
    mode = result.get("evaluation", {}).get("test")  # None in results written before it was recorded
    return (
        f"test mAP {result['test_map']:.2f} (classes without positives dropped: "
        f"{percent(result['test_map_with_positives'])}{groups}) with the checkpoint of epoch "
        f"{result['best_epoch']} (validation mAP {result['best_val_map']:.2f})"
        + ("" if mode in (None, "all") else f"; evaluated on {catalog.EVALUATION[mode]}")
    )
