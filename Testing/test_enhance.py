"""Tests for dinseg.core.enhance (CPU only, fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from dinseg.core.enhance import METHODS, EnhanceConfig, clahe, enhance, gamma_correct, unsharp_mask

from conftest import SAMPLE_CT


@pytest.fixture(scope="module")
def ct_slice() -> torch.Tensor:
    """Middle axial slice of the real abdominal CT, HU clipped to [-125, 275] and scaled to [0, 1]. (H, W)"""
    path = SAMPLE_CT
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)  # (z, y, x)
    hu = np.clip(volume[volume.shape[0] // 2], -125.0, 275.0)
    return torch.from_numpy((hu + 125.0) / 400.0)


@pytest.fixture(scope="module")
def low_contrast_slice(ct_slice: torch.Tensor) -> torch.Tensor:
    """The real slice squeezed into [0.4, 0.6]. (1, 1, H, W)"""
    return (0.4 + 0.2 * ct_slice)[None, None]


def mean_local_std(images: torch.Tensor, window: int = 9) -> float:
    """Mean over the image of the standard deviation in window x window neighbourhoods (no padding)."""
    x = images.double()
    mean = F.avg_pool2d(x, window, stride=1)
    mean_of_square = F.avg_pool2d(x * x, window, stride=1)
    return (mean_of_square - mean * mean).clamp(min=0).sqrt().mean().item()


def reference_clahe(image: np.ndarray, clip_limit: float, tiles: int, bins: int) -> np.ndarray:
    """Plain loop-per-tile / loop-per-pixel CLAHE with the conventions documented in dinseg.core.enhance.clahe."""
    height, width = image.shape
    tile_h, tile_w = -(-height // tiles), -(-width // tiles)
    levels = np.rint(np.clip(image, 0, 1).astype(np.float32) * np.float32(bins - 1)).astype(np.int64)
    padded = np.pad(levels, ((0, tile_h * tiles - height), (0, tile_w * tiles - width)), mode="reflect")
    area = tile_h * tile_w
    limit = max(1, int(clip_limit * area / bins))
    luts = np.zeros((tiles, tiles, bins))
    for ty in range(tiles):
        for tx in range(tiles):
            tile = padded[ty * tile_h:(ty + 1) * tile_h, tx * tile_w:(tx + 1) * tile_w]
            hist = np.bincount(tile.ravel(), minlength=bins)
            excess = int(np.maximum(hist - limit, 0).sum())
            hist = np.minimum(hist, limit) + excess // bins
            residual = excess % bins
            if residual:
                step = max(bins // residual, 1)
                for i in range(0, bins, step):
                    if residual == 0:
                        break
                    hist[i] += 1
                    residual -= 1
            luts[ty, tx] = np.cumsum(hist) / area

    def neighbours(coordinate: int, tile_size: int):
        position = coordinate / tile_size - 0.5  # tile t centred at pixel (t + 0.5) * tile_size (OpenCV)
        low = int(np.floor(position))
        return max(low, 0), min(low + 1, tiles - 1), position - low

    out = np.empty((height, width))
    for y in range(height):
        y0, y1, wy = neighbours(y, tile_h)
        for x in range(width):
            x0, x1, wx = neighbours(x, tile_w)
            level = levels[y, x]
            top = (1 - wx) * luts[y0, x0, level] + wx * luts[y0, x1, level]
            bottom = (1 - wx) * luts[y1, x0, level] + wx * luts[y1, x1, level]
            out[y, x] = (1 - wy) * top + wy * bottom
    return out


def test_clahe_raises_local_contrast_on_real_slice(low_contrast_slice: torch.Tensor) -> None:
    before = mean_local_std(low_contrast_slice)
    after = mean_local_std(clahe(low_contrast_slice))
    print(f"mean 9x9 local std: low-contrast {before:.4f}, after CLAHE {after:.4f}, x{after / before:.2f}")
    # Measured on abdomen_ct_A slice 56: 0.0227 -> 0.0509 (x2.25). Require x1.6, comfortably below.
    assert after > 1.6 * before


def test_enhance_default_config_raises_local_contrast(low_contrast_slice: torch.Tensor) -> None:
    before = mean_local_std(low_contrast_slice)
    after = mean_local_std(enhance(low_contrast_slice, EnhanceConfig()))
    assert after > 1.6 * before  # same figures as above: the default method is CLAHE at full strength


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1, 1, 200, 176), (3, 1, 37, 53), (2, 1, 8, 8), (2, 200, 176)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_output_range_shape_dtype(method: str, shape, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(shape, generator=generator).to(dtype)
    out = enhance(images, EnhanceConfig(method=method, strength=0.8))
    assert out.shape == images.shape
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_clahe_constant_image_is_finite_and_in_range(value: float) -> None:
    out = clahe(torch.full((2, 1, 40, 30), value))
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[0], out[1])


def test_clahe_is_deterministic_and_batch_independent(ct_slice: torch.Tensor) -> None:
    image = ct_slice[None, None]
    generator = torch.Generator().manual_seed(1)
    batch = torch.cat([torch.rand(image.shape, generator=generator), image, 1 - image])
    first, second = clahe(batch), clahe(batch)
    assert torch.equal(first, second)
    assert torch.equal(first[1:2], clahe(image))
    assert torch.equal(first[2:3], clahe(1 - image))


@pytest.mark.parametrize("height,width,clip_limit", [(64, 64, 2.0), (50, 45, 3.0), (64, 64, 100.0)])
def test_clahe_matches_loop_reference(height: int, width: int, clip_limit: float) -> None:
    generator = torch.Generator().manual_seed(2)
    # A smooth ramp plus noise, so that tiles have different histograms and some bins get clipped.
    ramp = torch.linspace(0.2, 0.7, width)[None, :] * torch.linspace(0.5, 1.0, height)[:, None]
    image = (ramp + 0.1 * torch.rand(height, width, generator=generator)).clamp(0, 1)
    expected = reference_clahe(image.numpy(), clip_limit, tiles=4, bins=64)
    actual = clahe(image[None, None], clip_limit=clip_limit, tiles=4, bins=64)[0, 0].double().numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_strength_zero_and_method_none_return_the_input(ct_slice: torch.Tensor) -> None:
    images = ct_slice[None, None]
    assert torch.equal(enhance(images, EnhanceConfig(method="clahe", strength=0.0)), images)
    assert torch.equal(enhance(images, EnhanceConfig(method="none")), images)


def test_strength_blends_input_and_enhanced(ct_slice: torch.Tensor) -> None:
    images = ct_slice[None, None]
    half = enhance(images, EnhanceConfig(method="clahe", strength=0.5))
    torch.testing.assert_close(half, 0.5 * images + 0.5 * clahe(images))


def test_gamma_below_one_brightens_midtones() -> None:
    images = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 1, 1, 5)
    out = gamma_correct(images, 0.7)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, 4] == 1
    assert (out[..., 1:4] > images[..., 1:4]).all()
    torch.testing.assert_close(out[0, 0, 0, 2], torch.tensor(0.5 ** 0.7))


def test_unsharp_raises_contrast_at_a_step_edge() -> None:
    images = torch.full((1, 1, 32, 32), 0.25)
    images[..., 16:] = 0.75
    out = unsharp_mask(images, sigma=2.0, amount=1.0)
    assert out[..., 16].mean() - out[..., 15].mean() > 0.5 + 0.1
    assert out[..., 15].max() < 0.25 and out[..., 16].min() > 0.75  # overshoot on both sides
    torch.testing.assert_close(out[..., :4], images[..., :4])  # flat region far from the edge untouched


def test_config_round_trips_through_dict_and_json() -> None:
    config = EnhanceConfig(method="unsharp", strength=0.3, clip_limit=3.5, tiles=4, bins=128,
                           gamma=0.5, unsharp_sigma=1.5, unsharp_amount=0.8)
    assert EnhanceConfig.from_dict(config.to_dict()) == config
    assert EnhanceConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert EnhanceConfig.from_dict({}) == EnhanceConfig()


def test_config_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="clip_limt"):
        EnhanceConfig.from_dict({"clip_limt": 3.0})


@pytest.mark.parametrize("bad", [
    {"method": "histeq"}, {"strength": 1.5}, {"strength": -0.1}, {"clip_limit": 0.0},
    {"tiles": 0}, {"tiles": 2.5}, {"bins": 1}, {"gamma": 0.0}, {"unsharp_sigma": 0.0},
    {"unsharp_amount": -1.0}, {"strength": "1"}, {"gamma": float("nan")},
])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        EnhanceConfig.from_dict(bad)


def test_functions_reject_wrong_shape() -> None:
    with pytest.raises(ValueError, match="B, 1, H, W"):
        clahe(torch.rand(2, 3, 16, 16))
