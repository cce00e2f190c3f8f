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


# --- the harder set ------------------------------------------------------------------------------


def test_the_hard_set_is_a_pure_function_of_seed_split_and_index():
    hard = D.get("hard")
    a, b = hard.make_sample(3, D.TEST, 5), hard.make_sample(3, D.TEST, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, hard.make_sample(4, D.TEST, 5).image)
    assert not np.array_equal(a.image, hard.make_sample(3, D.TRAIN, 5).image)


def test_the_hard_set_has_six_shape_classes_sizes_10_to_90_and_1_to_8_objects():
    hard = D.get("hard")
    assert hard.image_size == 192 and len(hard.classes) >= 6
    samples = hard.make_set(0, D.VALIDATION, 40)
    sides, counts, labels = [], [], set()
    for s in samples:
        assert s.image.shape == (3, 192, 192) and s.image.dtype == np.float32
        assert 0 <= s.image.min() and s.image.max() <= 1
        assert np.all(s.boxes[:, 2:] > s.boxes[:, :2]) and s.boxes.min() >= 0 and s.boxes.max() <= 192
        counts.append(len(s.boxes))
        sides += np.sqrt((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])).tolist()
        labels |= set(s.labels.tolist())
    assert labels == set(range(1, len(hard.classes) + 1))
    assert 1 <= min(counts) and max(counts) <= 8 and max(counts) >= 6
    assert 9 <= min(sides) <= 16 and 70 <= max(sides) <= 96


def _colour_inside(sample, skip):
    """Mean colour of a 3x3 patch inside each object (at 60% of its height, on the vertical axis).

    That point lies inside every class's shape but the ring's (its hole), so
    labels in ``skip`` (the ring) are left out, and so are objects that a
    later one overlaps.
    """
    colours, labels = [], []
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(sample.boxes, sample.labels, strict=True)):
        later = sample.boxes[k + 1 :]
        cx, cy = (x1 + x2) / 2, y1 + 0.6 * (y2 - y1)
        covered = np.any(
            (later[:, 0] <= cx + 2) & (later[:, 2] >= cx - 2) & (later[:, 1] <= cy + 2) & (later[:, 3] >= cy - 2)
        )
        if covered or label in skip:
            continue
        x, y = int(cx), int(cy)
        colours.append(sample.image[:, y - 1 : y + 2, x - 1 : x + 2].mean(axis=(1, 2)))
        labels.append(label)
    return colours, labels


def _colour_classifier_accuracy(ds):
    """Nearest class-mean colour, fitted on one seed and scored on another."""
    skip = [ds.classes.index("ring") + 1] if "ring" in ds.classes else []

    def collect(seed):
        xs, ys = [], []
        for s in ds.make_set(seed, D.TEST, 60):
            c, lab = _colour_inside(s, skip)
            xs += c
            ys += lab
        return np.array(xs), np.array(ys)

    x_fit, y_fit = collect(0)
    x_test, y_test = collect(1)
    classes = np.unique(y_fit)
    means = np.array([x_fit[y_fit == c].mean(axis=0) for c in classes])
    predicted = classes[np.argmin(((x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    return float(np.mean(predicted == y_test)), len(classes), len(y_test)


def test_colour_tells_the_easy_classes_apart_but_not_the_hard_ones():
    easy, _, _ = _colour_classifier_accuracy(D.get("easy"))
    hard, n_hard, tested = _colour_classifier_accuracy(D.get("hard"))
    assert easy > 0.9  # the check can tell: colour alone classifies the easy set
    assert n_hard == 5 and tested > 150
    assert hard < 0.35  # chance is 1/5 over the five filled classes
