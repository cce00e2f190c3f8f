"""The Region Proposal Network: anchors, anchor labels and sampling, the proposal layer, joint training, recall."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from roipool.fastrcnn import boxes as B  # noqa: E402
from roipool.fastrcnn import data as D  # noqa: E402
from roipool.fastrcnn import rpn as R  # noqa: E402
from roipool.fastrcnn.data import Sample  # noqa: E402
from roipool.fastrcnn.evaluate import proposal_recall  # noqa: E402
from roipool.fastrcnn.model import STRIDE, FastRCNN  # noqa: E402
from roipool.fastrcnn.train import TrainConfig, TrainingStep, model_config  # noqa: E402


def test_anchors_cover_the_image_cell_by_cell_with_every_size_and_aspect():
    sizes, aspects = (12.0, 40.0), (0.5, 1.0, 2.0)
    h, w = 3, 5  # feature map of a 24 x 40 image at stride 8
    anchors = R.make_anchors(h, w, STRIDE, sizes, aspects)
    a = len(sizes) * len(aspects)
    assert anchors.shape == (h * w * a, 4)
    per_cell = anchors.reshape(h, w, a, 4)
    centres = (per_cell[..., :2] + per_cell[..., 2:]) / 2
    # Every anchor of cell (i, j) is centred on the cell's centre in image pixels.
    for i in range(h):
        for j in range(w):
            torch.testing.assert_close(centres[i, j], torch.tensor([[(j + 0.5) * 8, (i + 0.5) * 8]] * a))
    # The centres tile the whole image: half a stride from each edge, a stride apart.
    assert centres[..., 0].min() == 4 and centres[..., 0].max() == 40 - 4
    assert centres[..., 1].min() == 4 and centres[..., 1].max() == 24 - 4
    # Within a cell: size-major, then aspect; area size^2, height / width = aspect.
    widths, heights = per_cell[0, 0, :, 2] - per_cell[0, 0, :, 0], per_cell[0, 0, :, 3] - per_cell[0, 0, :, 1]
    for k, (s, asp) in enumerate((s, asp) for s in sizes for asp in aspects):
        assert widths[k] * heights[k] == pytest.approx(s * s, rel=1e-5)
        assert heights[k] / widths[k] == pytest.approx(asp, rel=1e-5)


def test_the_rpn_head_gives_one_score_and_four_deltas_per_anchor_in_anchor_order():
    model = FastRCNN(**model_config("hard", "rpn"))
    features = model.backbone(torch.rand(2, 3, 64, 96))
    logits, deltas = model.rpn(features)
    anchors = model.anchors(features)
    assert features.shape[-2:] == (8, 12)
    assert logits.shape == (2, len(anchors)) and deltas.shape == (2, len(anchors), 4)
    assert len(anchors) == 8 * 12 * len(R.ANCHOR_SIZES) * len(R.ANCHOR_ASPECTS)


def test_anchor_labels_on_hand_made_cases():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 8.0],     # IoU 0.8 with gt 0: positive
        [0.0, 0.0, 10.0, 5.0],     # IoU 0.5: in between, ignored
        [0.0, 0.0, 10.0, 2.0],     # IoU 0.2: negative
        [30.0, 30.0, 40.0, 40.0],  # no overlap: negative
        [50.0, 50.0, 60.0, 64.0],  # IoU 10/14 = 0.714 with gt 1: positive
        [50.0, 50.0, 60.0, 65.0],  # IoU 2/3: gt 1's second best, ignored
    ])  # fmt: skip
    labels, matched = R.label_anchors(anchors, gt)
    assert labels.tolist() == [1, -1, 0, 0, 1, -1]
    assert matched[0] == 0 and matched[4] == 1


def test_the_best_anchor_of_each_box_is_positive_even_below_the_threshold_ties_included():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 4.0],   # IoU 0.4, the best: positive although < 0.7
        [0.0, 6.0, 10.0, 10.0],  # IoU 0.4 too: a tie, also positive
        [0.0, 0.0, 10.0, 2.0],   # IoU 0.2: negative
    ])  # fmt: skip
    labels, _ = R.label_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, 0]
    # No ground truth: every anchor is a negative.
    labels, _ = R.label_anchors(anchors, torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0]
    # A box that overlaps no anchor makes no anchor positive.
    labels, _ = R.label_anchors(anchors, torch.tensor([[80.0, 80.0, 90.0, 90.0]]))
    assert labels.tolist() == [0, 0, 0]


def test_anchor_sampling_takes_256_at_most_half_positive():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 300 + [0] * 1000 + [-1] * 50)
    pos, neg = R.sample_anchors(labels, g)
    assert len(pos) == 128 and len(neg) == 128
    assert torch.all(labels[pos] == 1) and torch.all(labels[neg] == 0)
    assert len(set(pos.tolist())) == 128  # without replacement
    labels = torch.tensor([1] * 10 + [0] * 1000)
    pos, neg = R.sample_anchors(labels, g)
    assert len(pos) == 10 and len(neg) == 246  # negatives fill up


def test_rpn_loss_is_log_loss_plus_smooth_l1_over_the_sampled_anchors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    gt = [torch.tensor([[2.0, 0.0, 12.0, 10.0]])]  # anchor 0 positive (the best, IoU 2/3), anchor 1 negative
    logits = torch.zeros(1, 2)
    deltas = torch.zeros(1, 2, 4)
    cls, box = R.rpn_loss(logits, deltas, anchors, gt, torch.Generator().manual_seed(0))
    assert cls.item() == pytest.approx(math.log(2))  # both at probability 1/2
    # Target dx = 2 / 10 = 0.2 (unnormalised), others 0: smooth L1 (beta 1/9) = 0.2 - 1/18, over 2 sampled.
    assert box.item() == pytest.approx((0.2 - 0.5 / 9) / 2, rel=1e-5)


def test_proposal_layer_decodes_clips_removes_small_boxes_runs_nms_and_keeps_top_n():
    anchors = torch.tensor([
        [10.0, 10.0, 30.0, 30.0],   # best score
        [11.0, 10.0, 31.0, 30.0],   # IoU 0.905 with the first: suppressed
        [50.0, 50.0, 80.0, 80.0],   # decoded 10 px to the right, then clipped at x = 64
        [5.0, 5.0, 7.0, 7.0],       # 2 px: removed (min size 4)
        [40.0, 0.0, 60.0, 20.0],    # kept, lowest score
    ])  # fmt: skip
    logits = torch.tensor([[3.0, 2.5, 2.0, 4.0, 1.0]])
    deltas = torch.zeros(1, 5, 4)
    deltas[0, 2, 0] = 10 / 30  # dx: a third of the width
    out = R.propose(logits, deltas, anchors, 64, 64, pre_nms_top_n=5, post_nms_top_n=10)
    boxes, scores = out[0]
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 10.0, 30.0, 30.0], [60.0, 50.0, 64.0, 64.0],
                                                    [40.0, 0.0, 60.0, 20.0]]))  # fmt: skip
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    # Top N, and the pre-NMS cut: only the best 2 anchors are looked at.
    assert len(R.propose(logits, deltas, anchors, 64, 64, 5, 2)[0][0]) == 2
    ((boxes, _),) = R.propose(logits, deltas, anchors, 64, 64, pre_nms_top_n=2, post_nms_top_n=10)
    torch.testing.assert_close(boxes, anchors[:1])  # the 2 px box is cut as too small; the first survives


def test_nms_matches_its_brute_force_definition_and_stops_at_max_keep():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 40], dim=1)
    scores = torch.rand(300, generator=g)
    kept = B.nms(boxes, scores, 0.5)
    iou = B.box_iou(boxes, boxes)
    expected = []
    for i in torch.argsort(scores, descending=True).tolist():
        if all(iou[i, j] <= 0.5 for j in expected):
            expected.append(i)
    assert kept.tolist() == expected
    assert B.nms(boxes, scores, 0.5, max_keep=7).tolist() == expected[:7]
    assert B.nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_a_tiny_joint_training_lowers_both_the_rpn_and_the_head_losses():
    torch.manual_seed(0)
    config = TrainConfig(dataset="easy", model=model_config("easy", "rpn"))
    model = FastRCNN(**config.model)
    step = TrainingStep(model, config, torch.Generator().manual_seed(0))
    samples = [D.make_sample(0, D.TRAIN, i, size=64) for i in range(2)]
    images = torch.stack([torch.from_numpy(s.image) for s in samples])
    gt_boxes = [torch.from_numpy(s.boxes) for s in samples]
    gt_labels = [torch.from_numpy(s.labels) for s in samples]
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = step(images, gt_boxes, gt_labels)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[:3], history[-3:]
    for part in ("rpn_cls", "rpn_box", "cls", "box"):
        before, after = np.mean([h[part] for h in first]), np.mean([h[part] for h in last])
        assert after < 0.7 * before, (part, before, after)


def test_proposal_recall_on_a_hand_made_case():
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    sample = Sample(np.zeros((3, 48, 48), np.float32), gt, np.array([1, 2]))
    ranked = torch.tensor([
        [0.0, 0.0, 10.0, 6.0],     # IoU 0.6 with the first box
        [20.0, 20.0, 40.0, 36.0],  # IoU 0.8 with the second
        [0.0, 0.0, 10.0, 9.0],     # IoU 0.9 with the first
    ])  # fmt: skip
    model = FastRCNN(**model_config("easy", "rpn"))
    model.proposals = lambda features, height, width, top_n, pre_nms_top_n: [(ranked[:top_n], torch.ones(3))]
    recall = proposal_recall(model, [sample], counts=(1, 2, 3), ious=(0.5, 0.7))
    assert recall == {1: {0.5: 0.5, 0.7: 0.0}, 2: {0.5: 1.0, 0.7: 0.5}, 3: {0.5: 1.0, 0.7: 1.0}}


def test_windows_recall_takes_k_windows_of_the_grid():
    model = FastRCNN(**model_config("hard", "windows"))
    windows = model.windows(192, 192)
    assert windows.shape == (2000, 4)
    assert model.windows(192, 192, 50).shape == (50, 4)
    samples = D.get("hard").make_set(0, D.TEST, 4)
    recall = proposal_recall(model, samples, counts=(50, 2000), ious=(0.5,))
    assert 0 <= recall[50][0.5] <= recall[2000][0.5] <= 1
