"""Counterfactual curriculum edits."""

import numpy as np
import pytest

from simfluence_jax import counterfactuals as cf

C = np.array([[0, 1, 2], [3, 4, 5], [6, 7, -1]], np.int32)


def test_remove_repacks_or_pads():
    np.testing.assert_array_equal(cf.remove(C, [1, 4]), [[0, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(cf.remove(C, [1], repack=False)[0], [0, -1, 2])


def test_duplicate_reverse_move():
    np.testing.assert_array_equal(cf.flatten(cf.duplicate(C, [0])), [0, 0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(cf.reverse(C), C[::-1])
    np.testing.assert_array_equal(cf.flatten(cf.move_to_end(C, 2)), [0, 1, 3, 4, 5, 6, 7, 2])
    np.testing.assert_array_equal(cf.flatten(cf.move(C, 7, 0)), [7, 0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(cf.move(C, 3, -1), cf.move_to_end(C, 3))
    assert C[0, 0] == 0  # inputs are never modified


def test_stack_pads_with_empty_steps():
    out = cf.stack([C, C[:1]])
    assert out.shape == (2, 3, 3)
    assert (out[1, 1:] == -1).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cf.move(C, 42, 0), "does not occur"),
        (lambda: cf.remove(C[0], [1]), "\\[T, B\\]"),
        (lambda: cf.remove(C, [-2]), "non-negative"),
        (lambda: cf.remove(C, list(range(8))), "empty"),
        (lambda: cf.stack([C, np.zeros((2, 4), np.int32)]), "batch sizes"),
        (lambda: cf.duplicate(C, [1], times=-1), "times"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
