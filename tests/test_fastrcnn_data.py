"""The generated data set and the proposals: deterministic, fresh per seed, proposals blind to ground truth."""

import inspect

import numpy as np

from roipool.fastrcnn import data as D
from roipool.fastrcnn import proposals as P


def test_samples_are_a_pure_function_of_seed_split_and_index():
    a, b = D.make_sample(3, D.TEST, 5), D.make_sample(3, D.TEST, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    c = D.make_sample(4, D.TEST, 5)
    assert not np.array_equal(a.image, c.image)
    d = D.make_sample(3, D.TRAIN, 5)
    assert not np.array_equal(a.image, d.image)


def test_samples_hold_valid_boxes_and_labels():
    for s in D.make_set(0, D.VALIDATION, 20):
        assert s.image.shape == (3, D.IMAGE_SIZE, D.IMAGE_SIZE) and s.image.dtype == np.float32
        assert 0 <= s.image.min() and s.image.max() <= 1
        assert 1 <= len(s.boxes) <= D.MAX_OBJECTS and len(s.boxes) == len(s.labels)
        assert np.all(s.boxes[:, 2:] > s.boxes[:, :2]) and s.boxes.min() >= 0 and s.boxes.max() <= D.IMAGE_SIZE
        assert set(s.labels.tolist()) <= set(range(1, len(D.CLASSES) + 1))


def test_proposals_take_only_the_image_size():
    for fn in (P.dense_proposals, P.sliding_windows):
        names = set(inspect.signature(fn).parameters)
        assert {"height", "width"} <= names
        assert not names & {"boxes", "gt", "gt_boxes", "labels", "targets", "sample", "image"}


def test_proposals_are_identical_for_images_with_different_ground_truth():
    a, b = D.make_sample(0, D.TEST, 0), D.make_sample(0, D.TEST, 1)
    assert not np.array_equal(a.boxes, b.boxes)
    pa = P.dense_proposals(*a.image.shape[1:])
    pb = P.dense_proposals(*b.image.shape[1:])
    assert np.array_equal(pa, pb)


def test_about_2000_proposals_that_cover_the_objects():
    props = P.dense_proposals(D.IMAGE_SIZE, D.IMAGE_SIZE)
    assert 1500 <= len(props) <= 2500
    best = [D._iou(b, props).max() for s in D.make_set(9, D.TEST, 30) for b in s.boxes]
    assert min(best) >= 0.5


def test_an_exact_count_of_proposals_on_any_size():
    props = P.dense_proposals(256, 256, 2000)
    assert props.shape == (2000, 4)
    assert props.min() >= 0 and props[:, 2].max() <= 256 and props[:, 3].max() <= 256
