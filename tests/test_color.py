"""`data.color.adjust_hue` gives torchvision's bytes: every colour, the factors colour jitter draws and the edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors

from hf_masked_vl.data.color import adjust_hue


@pytest.fixture(scope="module")
def every_colour() -> torch.Tensor:
    """(3, 4096, 4096) uint8: each of the 2^24 RGB colours once."""
    codes = torch.arange(2**24, dtype=torch.int64)
    planes = torch.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255])
    return planes.to(torch.uint8).reshape(3, 4096, 4096)


@pytest.mark.parametrize("hue_factor", [0.0371, -1e-7])  # a factor colour jitter draws; one that rounds to 1
def test_every_colour_matches_torchvision(every_colour, hue_factor):
    expected = TF.adjust_hue(every_colour, hue_factor)
    assert torch.equal(adjust_hue(every_colour, hue_factor), expected)


@pytest.mark.parametrize("hue_factor", [0.0, 0.1, -0.1, -0.0999, 1e-7, 0.5, -0.5])
def test_a_million_colours_match_torchvision_at_the_edges_of_the_range(every_colour, hue_factor):
    sample = every_colour[:, ::4, ::4]  # 2^20 colours: every fourth row and column of the grid
    assert torch.equal(adjust_hue(sample, hue_factor), TF.adjust_hue(sample, hue_factor))


def test_views_of_other_layouts_and_dtypes_match_torchvision():
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    strided = image[:, ::2, 1::3]  # not contiguous
    assert torch.equal(adjust_hue(strided, 0.07), TF.adjust_hue(strided, 0.07))
    as_float = image.float() / 255
    assert torch.equal(adjust_hue(as_float, -0.03), TF.adjust_hue(as_float, -0.03))  # handed to torchvision
    grey = image[:1]
    assert torch.equal(adjust_hue(grey, 0.2), TF.adjust_hue(grey, 0.2))
    assert adjust_hue(image, 0.0).dtype == torch.uint8
    channels_last = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    shifted = adjust_hue(channels_last, 0.05)
    assert shifted.is_contiguous() and torch.equal(shifted, TF.adjust_hue(channels_last, 0.05))
    wrapped = adjust_hue(tv_tensors.Image(image), 0.05)  # torchvision's type comes back
    assert isinstance(wrapped, tv_tensors.Image) and torch.equal(wrapped.as_subclass(torch.Tensor), shifted)
    pil = TF.to_pil_image(image)
    assert np.array_equal(np.asarray(adjust_hue(pil, 0.05)), np.asarray(TF.adjust_hue(pil, 0.05)))


def test_a_factor_outside_the_range_is_refused_as_torchvision_refuses_it():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    for factor in (0.51, -0.7):
        with pytest.raises(ValueError, match=r"hue_factor .* is not in \[-0.5, 0.5\]"):
            adjust_hue(image, factor)
        with pytest.raises(ValueError, match=r"hue_factor .* is not in \[-0.5, 0.5\]"):
            TF.adjust_hue(image, factor)
