"""The detector's picture (matplotlib, headless): proposals beside the final detections.

Lives with the detector (not in ``roipool.viz``): the detector never imports
``viz``, whose proposals picture imports only the detector's data generator,
so the two cannot form an import cycle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#469990")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    return plt


def detections_figure(model_dir, path, seed: int = 3, images: int = 3, min_score: float = 0.5,
                      top_proposals: int = 30, dataset: str | None = None) -> Path:  # fmt: skip
    """Per test image, the best ``top_proposals`` proposals beside the detections scoring >= ``min_score``.

    ``dataset``: the generated set to draw from (default: the one the model
    was trained on). The left panel of each pair shows the RPN's proposals
    (objectness in the outline's opacity) or, for a sliding-window model, an
    even sample of its windows; the right panel the final detections with
    class name and score, and the ground truth dashed.
    """
    import torch

    from . import data as D
    from .evaluate import detect, load

    model = load(model_dir)
    ds = D.get(dataset or model.dataset)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 * images, figsize=(3.3 * 2 * images, 3.8), squeeze=False)
    colours = {c: COLOURS[i % len(COLOURS)] for i, c in enumerate(ds.classes)}
    rpn = model.rpn is not None
    for i in range(images):
        sample = ds.make_sample(seed, D.TEST, i)
        image = torch.from_numpy(sample.image)
        boxes, scores, labels, (props, objectness) = detect(model, image, return_proposals=True)
        ax_p, ax_d = axes[0, 2 * i], axes[0, 2 * i + 1]
        for ax in (ax_p, ax_d):
            ax.imshow(sample.image.transpose(1, 2, 0))
            ax.set_xlim(0, sample.image.shape[2])
            ax.set_ylim(sample.image.shape[1], 0)
            ax.set_xticks([])
            ax.set_yticks([])
        if rpn:
            shown = props[:top_proposals]
            alphas = objectness[:top_proposals].clamp(0.25, 1).tolist()
        else:
            pick = np.linspace(0, len(props) - 1, min(top_proposals, len(props))).round().astype(int)
            shown, alphas = props[pick], [0.8] * len(pick)
        for (x1, y1, x2, y2), alpha in zip(shown.tolist(), alphas, strict=True):
            ax_p.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec="yellow", alpha=alpha))
        what = f"top {len(shown)} of {len(props)} RPN proposals" if rpn else f"{len(shown)} of {len(props)} windows"
        ax_p.set_title(what, fontsize=9)
        for x1, y1, x2, y2 in sample.boxes.tolist():
            ax_d.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1, ec="white", ls="--"))
        drawn = 0
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            if score < min_score:
                continue
            drawn += 1
            name = ds.classes[label - 1]
            x1, y1, x2, y2 = box
            ax_d.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec=colours[name]))
            ax_d.text(x1, y1 - 1, f"{name} {score:.2f}", fontsize=7, color="white", va="bottom",
                      bbox=dict(facecolor=colours[name], alpha=0.8, pad=1, lw=0))  # fmt: skip
        ax_d.set_title(f"{drawn} detection{'' if drawn == 1 else 's'} (ground truth dashed)", fontsize=9)
    kind = "Faster R-CNN (RPN proposals)" if rpn else "Fast R-CNN (sliding windows)"
    fig.suptitle(f"{kind}, {model.pool.kind}: proposals and detections scoring >= {min_score}, "
                 f"'{ds.name}' test images, seed {seed}", fontsize=10)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
