"""A cell crop's blanked surround becomes one superpixel of its own."""

from __future__ import annotations

import numpy as np

from allxai.explainer.segmentation import isolate


def test_the_masked_pixels_become_one_new_superpixel_and_ids_stay_consecutive() -> None:
    segments = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 1]])
    mask = np.zeros_like(segments, bool)
    mask[0, :2] = True  # all of superpixel 0's first row
    mask[2, 0] = True  # part of superpixel 3
    out = isolate(segments, mask)
    assert set(np.unique(out)) == set(range(out.max() + 1))
    assert len(np.unique(out[mask])) == 1
    assert not np.isin(out[~mask], out[mask]).any()
    # The unmasked pixels keep their grouping.
    assert out[1, 1] == out[1, 2] == out[2, 2] and out[0, 2] == out[1, 3]


def test_an_empty_or_full_mask_changes_nothing() -> None:
    segments = np.array([[0, 1], [2, 3]])
    assert np.array_equal(isolate(segments, np.zeros((2, 2), bool)), segments)
    assert np.array_equal(isolate(segments, np.ones((2, 2), bool)), segments)
