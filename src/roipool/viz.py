"""Pictures of RoI pooling (matplotlib, headless): the worked example and proposals.

The detector's picture lives with it, in ``fastrcnn/figures.py``.

Every function writes one PNG and returns its path. Bin edges come from
``cpu.geometry.roi_pool_bins`` (the kernels' own definition) and pooled values
from ``roipool.roi_pool_with_argmax``, so the pictures show what the library
computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BIN_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#469990")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def forward_pass_figure(path, feature_map, proposal, spatial_scale, output_size) -> Path:
    """The seed's forward pass on one channel: map, proposal, bins, each bin's maximum, pooled grid.

    ``feature_map (H, W)``, ``proposal`` one ``[batch_index, x1, y1, x2, y2]``
    row in image coordinates, ``spatial_scale`` and ``output_size`` as for
    :func:`roipool.roi_pool`; ``roipool demo`` passes its worked example.
    """
    import roipool

    from . import _checks
    from .cpu.geometry import roi_pool_bins

    fmap = np.asarray(feature_map, np.float32)
    roi = np.asarray(proposal, np.float32)
    scale = spatial_scale
    ph, pw = _checks.output_size_pair(output_size)
    height, width = fmap.shape
    out, argmax = roipool.roi_pool_with_argmax(fmap[None, None], roi[None], (ph, pw), scale)
    _, hbins, wbins, _ = roi_pool_bins(roi[None].astype(np.float32), np.float32(scale), ph, pw, height, width)

    plt = _pyplot()
    fig, (ax, axo) = plt.subplots(1, 2, figsize=(11, 5.2), gridspec_kw={"width_ratios": [width, pw * 1.6]})
    ax.imshow(fmap, cmap="Greys", vmin=0, vmax=1.6)
    for r in range(height):
        for c in range(width):
            ax.text(c, r, f"{fmap[r, c]:.2f}", ha="center", va="center", fontsize=8)
    # The proposal scaled to the map (before rounding), dashed.
    _, x1, y1, x2, y2 = (float(v) for v in roi)
    s = float(scale)
    ax.add_patch(plt.Rectangle((x1 * s - 0.5, y1 * s - 0.5), (x2 - x1) * s, (y2 - y1) * s,
                               fill=False, ls="--", lw=1.5, ec="black"))  # fmt: skip
    for i in range(ph):
        for j in range(pw):
            colour = BIN_COLOURS[(i * pw + j) % len(BIN_COLOURS)]
            r0, r1 = hbins[0, i]
            c0, c1 = wbins[0, j]
            # Neighbouring bins may share a row or column: inset each a little so both show.
            inset = 0.06 + 0.05 * ((i + j) % 2)
            ax.add_patch(plt.Rectangle((c0 - 0.5 + inset, r0 - 0.5 + inset), c1 - c0 - 2 * inset,
                                       r1 - r0 - 2 * inset, fill=False, lw=2.2, ec=colour))  # fmt: skip
            where = int(argmax[0, 0, i, j])
            if where >= 0:
                r, c = divmod(where, width)
                ax.add_patch(plt.Circle((c, r), 0.36, fill=False, lw=2.5, ec=colour))
    ax.set_title(f"feature map {height}x{width}, proposal /{round(1 / s)} (dashed),\n"
                 f"{ph}x{pw} bins (colours), each bin's maximum (circles)", fontsize=10)  # fmt: skip
    ax.set_xticks(range(width))
    ax.set_yticks(range(height))
    axo.imshow(out[0, 0], cmap="Greys", vmin=0, vmax=1.6)
    for i in range(ph):
        for j in range(pw):
            colour = BIN_COLOURS[(i * pw + j) % len(BIN_COLOURS)]
            axo.text(j, i, f"{out[0, 0, i, j]:.2f}", ha="center", va="center", fontsize=14, color=colour,
                     fontweight="bold")  # fmt: skip
            axo.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, lw=2.5, ec=colour))
    axo.set_xticks(range(pw))
    axo.set_yticks(range(ph))
    axo.set_title(f"pooled output {ph}x{pw}", fontsize=10)
    return _save(fig, path)


def proposals_figure(path, seed: int = 54, output_size: int = 7) -> Path:
    """A generated image with several proposals, each beside its RoI-pooled ``output_size`` grid.

    The image's own RGB channels are pooled (``spatial_scale=1``), so each
    pooled grid is a small picture of what the proposal covers: every proposal,
    whatever its size and aspect, becomes the same fixed-size grid. The
    proposals are the sliding windows that best cover each object, and one
    window on background.
    """
    import roipool

    from .fastrcnn import data as D
    from .fastrcnn.proposals import dense_proposals

    sample = D.make_sample(seed, D.TEST, 0)
    windows = dense_proposals(*sample.image.shape[1:])
    chosen = []
    for box in sample.boxes:
        chosen.append(windows[int(np.argmax(D._iou(box, windows)))])
    overlap = np.max([D._iou(b, windows) for b in sample.boxes], axis=0)
    background = np.nonzero(overlap == 0)[0]
    if len(background):
        chosen.append(windows[background[len(background) // 2]])
    boxes = np.array(chosen, np.float32)
    pooled = roipool.roi_pool(sample.image[None], [boxes], output_size, 1.0)

    plt = _pyplot()
    k = len(boxes)
    fig = plt.figure(figsize=(4.2 + 1.6 * k, 4.2))
    grid = fig.add_gridspec(2, k + 2, width_ratios=[1.3, 1.3] + [1] * k)
    ax = fig.add_subplot(grid[:, :2])
    ax.imshow(sample.image.transpose(1, 2, 0))
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        colour = BIN_COLOURS[n % len(BIN_COLOURS)]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.2, ec=colour))
        ax.text(x1 + 1, y1 + 4, str(n + 1), color=colour, fontsize=10, fontweight="bold")
    ax.set_title(f"{len(windows)} sliding windows; {k} shown", fontsize=10)
    ax.axis("off")
    for n in range(k):
        colour = BIN_COLOURS[n % len(BIN_COLOURS)]
        x1, y1, x2, y2 = boxes[n]
        crop = fig.add_subplot(grid[0, n + 2])
        crop.imshow(sample.image[:, int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))].transpose(1, 2, 0))
        crop.set_title(f"{n + 1}: {x2 - x1:.0f}x{y2 - y1:.0f} px", fontsize=9, color=colour)
        crop.set_xticks([])
        crop.set_yticks([])
        out = fig.add_subplot(grid[1, n + 2])
        out.imshow(np.clip(pooled[n].transpose(1, 2, 0), 0, 1))
        out.set_title(f"pooled {output_size}x{output_size}", fontsize=9, color=colour)
        out.set_xticks([])
        out.set_yticks([])
        for spine in (*crop.spines.values(), *out.spines.values()):
            spine.set_edgecolor(colour)
            spine.set_linewidth(2)
    return _save(fig, path)
