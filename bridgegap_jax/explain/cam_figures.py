"""Figures of the explanation analysis (matplotlib with the Agg backend, imported when drawing)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

PANEL_INCHES, COLORBAR_INCHES, HEADER_INCHES, DPI = 1.7, 0.45, 0.5, 80  # CAM figures; 80 dpi keeps PNGs small


# ----------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_size_px(num_rows: int, num_columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a CAM figure: the image column, the model columns, the colour bars."""
    width = PANEL_INCHES * (num_columns + 1) + COLORBAR_INCHES
    height = PANEL_INCHES * 1.2 * num_rows + HEADER_INCHES  # 1.2: room for each row's titles
    return round(width * DPI), round(height * DPI)


def draw_cam_figure(path: str, images, rows, maps, probs, columns: Sequence, names: Sequence[str]) -> None:
    """images (R,S,S,3); rows [(image index, class)]; maps (R, V, S, S); probs (R, V)."""
    plt = _pyplot()
    width, height = figure_size_px(len(rows), len(columns))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    grid = fig.add_gridspec(
        len(rows),
        len(columns) + 2,
        width_ratios=[1] * (len(columns) + 1) + [0.08],
        left=0.01,
        right=0.96,
        top=1 - HEADER_INCHES / (height / DPI),
        bottom=0.01,
        wspace=0.05,
        hspace=0.3,
    )
    for r, (index, c) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(images[r], interpolation="nearest")
        ax.set_title(f"{'image' + chr(10) if r == 0 else ''}#{index}: {names[c]}", fontsize=8)
        ax.axis("off")
        vmin, vmax = float(maps[r].min()), float(maps[r].max())  # one colour scale per row
        grey = images[r].mean(-1)  # a grey underlay: every colour in the panel is the map's
        for v, column in enumerate(columns):
            ax = fig.add_subplot(grid[r, v + 1])
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            shown = ax.imshow(
                maps[r, v], cmap="jet", vmin=vmin, vmax=vmax, alpha=0.55, interpolation="nearest"
            )
            header = column.name.replace(" + ", "\n+ ") + "\n" if r == 0 else ""
            ax.set_title(f"{header}p = {probs[r, v]:.3f}", fontsize=8)
            ax.axis("off")
        bar = fig.colorbar(shown, cax=fig.add_subplot(grid[r, -1]))
        bar.ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _sample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False)) if n > limit else np.arange(n)


def draw_scatter(path: str, columns, maps, models: dict, reference: str) -> None:
    """Cell pairs (reference, model) with the fitted slopes through the origin, one panel per model."""
    plt = _pyplot()
    compared = [c for c in columns if c.name != reference]
    fig, axes = plt.subplots(1, len(compared), figsize=(3.2 * len(compared), 3.2), dpi=DPI, squeeze=False)
    x_all = maps[reference].ravel()
    keep = _sample(x_all.size, 20_000)
    for ax, column in zip(axes[0], compared):
        x, y = x_all[keep], maps[column.name].ravel()[keep]
        ax.scatter(x, y, s=2, alpha=0.25, color="tab:blue", rasterized=True)
        stats = models[column.name]["vs_reference"]
        for sign, slope, colour in (
            (1, stats["slope_positive_cells"], "tab:red"),
            (-1, stats["slope_negative_cells"], "tab:green"),
        ):
            end = np.max(sign * x_all) * sign if np.any(sign * x_all > 0) else 0.0
            ax.plot(
                [0, end],
                [0, slope * end],
                color=colour,
                lw=1.5,
                label=f"{'positive' if sign > 0 else 'negative'} cells: slope {slope:.2f}",
            )
        lo, hi = float(x.min()), float(x.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"{reference} (reference)", fontsize=8)
        ax.set_ylabel(column.name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def draw_ratio_histograms(path: str, columns, maps, reference: str) -> None:
    """Per-cell ratio model / reference on the reference's positive and negative cells."""
    plt = _pyplot()
    compared = [c for c in columns if c.name != reference]
    ref = maps[reference]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=DPI)
    for ax, region, cells in ((axes[0], "positive", ref > 0), (axes[1], "negative", ref < 0)):
        ratios = {c.name: maps[c.name][cells] / ref[cells] for c in compared}
        if not cells.any():
            ax.set_title(f"no {region} reference cells", fontsize=8)
            continue
        # Cells where the reference is near 0 give huge ratios: show the central 90%, clip the rest.
        lo, hi = np.percentile(np.concatenate(list(ratios.values())), [5, 95])
        lo, hi = min(lo, 0.0), max(hi, 1.5)
        for i, (name, values) in enumerate(ratios.items()):
            colour = f"C{i}"
            ax.hist(
                np.clip(values, lo, hi),
                bins=60,
                range=(lo, hi),
                histtype="step",
                color=colour,
                label=f"{name}: median {np.median(values):.2f}",
            )
            ax.axvline(np.median(values), color=colour, lw=0.8, ls=":")
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(
            f"{region} cells ({reference} {'>' if region == 'positive' else '<'} 0): model / {reference}",
            fontsize=8,
        )
        ax.set_xlabel("ratio per cell (clipped to the 5th-95th percentile)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
