"""The click-correction engine API (no MRML, no Qt): one call per click.

``Refiner(card).refine(volume, labels, structure, positive, negative)`` crops the image around
the structure's current mask and all its clicks, runs the refinement network on every slice of
the crop and returns new labels (z, y, x) on the input grid. The refined structure takes the
voxels the network claims (from background or from other structures) and gives the voxels it
releases back to background; every other structure is untouched outside the claimed voxels.

Points are (i, j, k) voxel indices (``space="ijk"``, ITK / Slicer index order, the array's
``[k, j, i]``) or LPS millimetres (``space="lps"``). With ``reach_mm`` (default 30; None: never) corrections after a structure's first
click are local: only slices within that distance of a click are run and only voxels within it
may change (the first click re-segments the whole crop), which keeps many clicks from drifting. The volume is read in its array order: slices
are the array's first axis, as for the thick-slice acquisitions the network was trained on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..core.errors import InputError
from ..core.io import ImageVolume
from ..core.preprocess import normalize
from .card import RefinerCard, load_refiner_card, load_refiner_network
from .clicks import click_map
from .crop import crop_box, network_input, new_mask

POINT_SPACES = ("ijk", "lps")
#: how far (mm) from its clicks a structure's later clicks may change it (chosen on ACDC, BTCV and
#: CHAOS val cases: the whole crop at every click drifts after about five clicks; 30 and 60 mm tie)
DEFAULT_REACH_MM = 30.0
#: slices per forward pass (bounds memory on large crops)
BATCH_SLICES = 32


class Refiner:
    """A loaded refiner card: ``refine`` corrects one structure from clicks (see the module docstring)."""

    def __init__(self, card: Union[RefinerCard, str, Path], reach_mm: Optional[float] = DEFAULT_REACH_MM):
        if reach_mm is not None and not reach_mm > 0:
            raise InputError(f"reach must be a positive distance in mm, got {reach_mm!r}")
        self.card = card if isinstance(card, RefinerCard) else load_refiner_card(card)
        self.reach_mm = reach_mm
        self.network = load_refiner_network(self.card)
        self._normalised: Tuple[Optional[np.ndarray], str, Optional[np.ndarray]] = (None, "", None)

    def refine(self, volume: ImageVolume, labels: np.ndarray, structure: int,
               positive: Sequence[Sequence[float]] = (), negative: Sequence[Sequence[float]] = (),
               space: str = "ijk", modality: Optional[str] = None) -> np.ndarray:
        """New labels (z, y, x), same dtype, after refining ``structure`` with all its clicks so far.

        volume: 3D image; labels: (z, y, x) integer labels on its grid; structure: the label value
        to refine (> 0); positive / negative: (N, 3) points in ``space``; modality: "CT" or "MR",
        which chooses the intensity normalisation (default: ``volume.modality``). Raises InputError
        for a 4D volume, labels on another grid, no clicks, a click outside the image, or an
        unknown modality.
        """
        if volume.is_time_series:
            raise InputError("click correction needs a 3D volume; pick one frame of the time series first")
        labels = np.asarray(labels)
        shape = volume.geometry.array_shape
        if labels.shape != shape:
            raise InputError(f"labels of shape {labels.shape} (z, y, x) are not on the image grid {shape}")
        if not np.issubdtype(labels.dtype, np.integer) or isinstance(structure, bool) or \
                not isinstance(structure, (int, np.integer)) or not 0 < structure <= np.iinfo(labels.dtype).max:
            raise InputError(f"structure must be a positive label value of the {labels.dtype} labels, got {structure!r}")
        plus = self._voxels(positive, volume, space, "positive")
        minus = self._voxels(negative, volume, space, "negative")
        if not len(plus) and not len(minus):
            raise InputError("click correction needs at least one positive or negative click")
        image01 = self._image01(volume, (modality or volume.modality or "").upper())
        spacing = tuple(reversed(volume.geometry.spacing))
        config = self.card.network
        mask = labels == structure
        points = np.concatenate([plus, minus])
        box = crop_box(mask, points, spacing, config)
        local = bool(self.reach_mm) and len(points) > 1
        if local:
            reach = self.reach_mm / spacing[0]
            box = replace(box, z0=max(box.z0, int(np.floor(points[:, 0].min() - reach))),
                          z1=min(box.z1, int(np.ceil(points[:, 0].max() + reach)) + 1))
        x = network_input(image01, mask, plus, minus, spacing, box, config)
        import torch

        with torch.inference_mode():
            logits = torch.cat([self.network(x[i:i + BATCH_SLICES]) for i in range(0, len(x), BATCH_SLICES)])
        part, where = new_mask(mask, x, logits, box)
        if local:
            axes = [np.arange(w.start, w.stop) * s for w, s in zip(where, spacing)]
            near = click_map(points * np.asarray(spacing), axes, self.reach_mm, shape="disk") > 0
            part = np.where(near, part, mask[where])
        result = labels.copy()
        region = result[where]  # a view: edits land in result
        region[part & (region != structure)] = structure
        region[~part & (region == structure)] = 0
        return result

    def _image01(self, volume: ImageVolume, modality: str) -> np.ndarray:
        """The volume normalised as the card says for ``modality``, cached for the next click."""
        if modality not in self.card.normalisation:
            raise InputError(f"click correction needs the image's modality, one of "
                             f"{', '.join(sorted(self.card.normalisation))}; got {modality or 'none'}")
        if self._normalised[0] is not volume.array or self._normalised[1] != modality:
            normalisation = self.card.normalisation[modality]
            self._normalised = (volume.array, modality, normalize(volume.array, normalisation.bounds(volume.array)))
        return self._normalised[2]

    @staticmethod
    def _voxels(points, volume: ImageVolume, space: str, kind: str) -> np.ndarray:
        """(N, 3) points in ``space`` -> (N, 3) float voxel indices (z, y, x), checked inside the image."""
        if space not in POINT_SPACES:
            raise InputError(f"point space must be one of {', '.join(POINT_SPACES)}, got {space!r}")
        try:
            array = np.asarray(points, dtype=np.float64).reshape(-1, 3) if len(points) else np.zeros((0, 3))
        except (TypeError, ValueError):
            raise InputError(f"{kind} clicks must be (x, y, z) triples of numbers, got {points!r}") from None
        if not np.isfinite(array).all():
            raise InputError(f"{kind} clicks must be finite numbers, got {points!r}")
        if space == "lps":
            to_index = np.linalg.inv(volume.geometry.index_to_lps())
            array = (to_index[:3, :3] @ array.T).T + to_index[:3, 3]
        size = np.asarray(volume.geometry.size, dtype=np.float64)
        outside = np.any((array < -0.5) | (array > size - 0.5), axis=1)
        if outside.any():
            point = np.asarray(points, dtype=np.float64).reshape(-1, 3)[int(np.argmax(outside))]
            raise InputError(f"{kind} click at {tuple(round(float(v), 2) for v in point)} ({space}) lies outside "
                             f"the image (size {tuple(int(s) for s in size)} voxels)")
        return array[:, ::-1].copy()
