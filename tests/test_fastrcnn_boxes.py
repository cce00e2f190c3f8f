"""Box arithmetic of the Fast R-CNN example: IoU, box coding, NMS."""

import pytest

torch = pytest.importorskip("torch")

from roipool.fastrcnn import boxes as B  # noqa: E402


def test_iou_of_hand_computed_pairs():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]])
    expected = torch.tensor([[1.0, 50 / 150, 0.0, 25 / 100]])
    torch.testing.assert_close(B.box_iou(a, b), expected)


def test_encode_then_decode_returns_the_targets():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    proposals = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 60], dim=1)
    xy = torch.rand(200, 2, generator=g) * 100
    targets = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 60], dim=1)
    deltas = B.encode(proposals, targets)
    torch.testing.assert_close(B.decode(proposals, deltas), targets, atol=1e-4, rtol=1e-5)


def test_encode_of_a_box_onto_itself_is_zero_and_shifts_are_normalised():
    p = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    torch.testing.assert_close(B.encode(p, p), torch.zeros(1, 4))
    # Shifted right by half its width, twice as tall: dx = 0.5 / 0.1, dh = log(2) / 0.2.
    t = torch.tensor([[20.0, 0.0, 40.0, 80.0]])
    torch.testing.assert_close(B.encode(p, t), torch.tensor([[5.0, 0.0, 0.0, 0.69314718 / 0.2]]))


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7])
    assert B.nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert B.nms(boxes, scores, 0.95).tolist() == [1, 0, 3, 2]


def test_clip_keeps_boxes_inside_the_image():
    out = B.clip(torch.tensor([[-5.0, -1.0, 140.0, 50.0]]), height=128, width=128)
    assert out.tolist() == [[0.0, 0.0, 128.0, 50.0]]
