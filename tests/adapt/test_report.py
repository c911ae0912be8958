"""The training loss curve image (Train Adapter's second output)."""

import torch

from mimictalk_lib.adapt.report import CURVE_MARGIN, LINE_COLOUR, loss_curve_image


def _line(img: torch.Tensor) -> torch.Tensor:
    """bool [H, W]: pixels of the loss line."""
    return (img[0] - torch.tensor(LINE_COLOUR)).abs().amax(-1) < 1e-6


def test_no_values_gives_the_axes_only():
    img = loss_curve_image([])
    assert img.shape == (1, 256, 512, 3) and not _line(img).any()
    assert float(img.min()) == 0.5 and float(img.max()) == 1.0


def test_a_falling_loss_runs_from_top_left_to_bottom_right():
    line = _line(loss_curve_image([10.0, 1.0, 0.1], height=100, width=200))
    rows, cols = line.nonzero(as_tuple=True)
    assert int(cols.min()) == CURVE_MARGIN and int(cols.max()) == 200 - 1 - CURVE_MARGIN
    assert int(rows[cols == cols.min()].min()) == CURVE_MARGIN  # highest loss at the top
    assert int(rows[cols == cols.max()].max()) == 100 - CURVE_MARGIN  # lowest at the bottom (two pixels thick)
    mid = rows[(cols.float() - (200 - 1) / 2).abs() <= 1].float().mean()  # the middle step
    assert abs(float(mid) - 50) < 3  # log scale: 1.0 lies halfway between 10 and 0.1


def test_single_value_is_a_flat_line_and_bad_values_are_skipped():
    one = _line(loss_curve_image([2.0]))
    assert one.any() and torch.equal(_line(loss_curve_image([2.0, 0.0, -1.0, float("nan"), float("inf")])), one)
    flat = _line(loss_curve_image([3.0, 3.0, 3.0]))
    assert flat.nonzero()[:, 0].unique().numel() == 2  # one row, two pixels thick
