"""Training slices: volumes prepared exactly as inference prepares them, sampled and augmented in 2D."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ...core.geometry import Geometry
from ...core.io import ImageVolume
from ...core.preprocess import Preprocessing, neighbour_indices, resize_slices, to_model_grid

_CHUNK = 32


@dataclass
class PreparedCase:
    """One volume on the model's grid: canonical orientation, normalised, at the model's in-plane spacing.

    image: (z, h, w) float32 in [0, 1]; labels: (z, h, w) uint8.
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def foreground_slices(self) -> np.ndarray:
        return np.flatnonzero(self.labels.reshape(self.labels.shape[0], -1).any(axis=1))


def prepare_case(case_id: str, volume: ImageVolume, labels: np.ndarray, preprocessing: Preprocessing) -> PreparedCase:
    """Canonicalise, normalise and resample a labelled 3D volume with inference's own functions."""
    import torch

    geometry: Geometry = volume.geometry
    reorientation = preprocessing.reorientation(geometry)
    canonical = reorientation.to_canonical(volume.array)
    canonical_labels = reorientation.to_canonical(labels)
    spacing_x, spacing_y, _ = reorientation.spacing(geometry)
    model_shape = preprocessing.model_shape(canonical.shape[1:], (spacing_x, spacing_y))
    bounds = preprocessing.normalization.bounds(volume.array)
    images, masks = [], []
    for start in range(0, canonical.shape[0], _CHUNK):
        images.append(to_model_grid(canonical[start:start + _CHUNK], bounds, model_shape)[:, 0].numpy())
        chunk = torch.from_numpy(np.ascontiguousarray(canonical_labels[start:start + _CHUNK])).float()
        masks.append(resize_slices(chunk.unsqueeze(1), model_shape, mode="nearest")[:, 0].to(torch.uint8).numpy())
    return PreparedCase(case_id, np.concatenate(images), np.concatenate(masks))


@dataclass
class Augmentation:
    """Random 2D augmentation that prepares a model for other patients, scanners and resolutions.

    Geometry: rotation, isotropic scaling, translation, elastic deformation (probability
    ``elastic``, off by default), and flips only along ``flip_axes`` (none by default: left and
    right organs must stay apart). Appearance: MR bias field (coefficients up to ``bias_field``,
    off by default), contrast (gamma), intensity scale and shift, simulated lower resolution,
    blur, sharpening, Gaussian noise. ``structure_intensity`` (off by default) shifts each
    labelled structure's intensity by its own random amount (up to that many units of the
    normalised [0, 1] range), as another contrast phase or sequence would: a CT model then
    cannot take an organ's brightness for the organ.
    """

    rotate_degrees: float = 15.0
    scale: float = 0.2
    translate: float = 0.05
    flip_axes: Tuple[int, ...] = ()
    gamma: Tuple[float, float] = (0.7, 1.5)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    low_resolution: Tuple[float, float] = (0.5, 1.0)
    noise_std: float = 0.03
    elastic: float = 0.0
    bias_field: float = 0.0
    structure_intensity: float = 0.0
    probability: float = 0.3

    def build(self, patch_size: Tuple[int, int]):
        """A MONAI Compose over dicts {"image": (1, h, w), "label": (1, h, w)} giving patch-sized outputs."""
        from monai import transforms as T

        p = self.probability
        steps = [T.SpatialPadd(keys=("image", "label"), spatial_size=patch_size),
                 T.RandSpatialCropd(keys=("image", "label"), roi_size=patch_size, random_size=False),
                 T.RandAffined(keys=("image", "label"), prob=0.8, rotate_range=(np.deg2rad(self.rotate_degrees),),
                               scale_range=(self.scale, self.scale),
                               translate_range=(self.translate * patch_size[0], self.translate * patch_size[1]),
                               mode=("bilinear", "nearest"), padding_mode="zeros")]
        if self.elastic > 0:
            steps.append(T.Rand2DElasticd(keys=("image", "label"), prob=self.elastic, spacing=(24, 24),
                                          magnitude_range=(1.0, 3.0), mode=("bilinear", "nearest"),
                                          padding_mode="zeros"))
        steps += [T.RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=axis) for axis in self.flip_axes]
        if self.structure_intensity > 0:
            steps.append(rand_structure_intensity(prob=p, max_shift=self.structure_intensity))
        if self.bias_field > 0:
            steps.append(T.RandBiasFieldd(keys="image", prob=p, coeff_range=(0.0, self.bias_field)))
        steps += [T.RandSimulateLowResolutiond(keys="image", prob=p, zoom_range=self.low_resolution,
                                               downsample_mode="area", upsample_mode="bilinear"),
                  T.RandGaussianSmoothd(keys="image", prob=p / 2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
                  T.RandGaussianSharpend(keys="image", prob=p / 3),
                  T.RandAdjustContrastd(keys="image", prob=p, gamma=self.gamma),
                  T.RandScaleIntensityd(keys="image", prob=p, factors=self.intensity_scale),
                  T.RandShiftIntensityd(keys="image", prob=p, offsets=self.intensity_shift),
                  T.RandGaussianNoised(keys="image", prob=p, std=self.noise_std),
                  T.Lambdad(keys="image", func=_clip_to_unit_range)]
        return T.Compose(steps)


def rand_structure_intensity(prob: float, max_shift: float):
    """A MONAI transform over {"image": (C, h, w), "label": (1, h, w)}: with probability ``prob``
    each label value present, background excepted, gets its own uniform shift in
    [-max_shift, max_shift] added to the image (every channel) where the label holds it."""
    from monai.transforms import MapTransform, RandomizableTransform

    class _RandStructureIntensityd(RandomizableTransform, MapTransform):
        def __init__(self):
            RandomizableTransform.__init__(self, prob)
            MapTransform.__init__(self, keys=("image",))

        def __call__(self, data):
            self.randomize(None)
            if not self._do_transform:
                return data
            label = data["label"][0].round()
            image = data["image"].clone()
            for value in label.unique().tolist():
                if value > 0:
                    image[:, label == value] += float(self.R.uniform(-max_shift, max_shift))
            return dict(data, image=image)

    return _RandStructureIntensityd()


def _clip_to_unit_range(image):
    return image.clamp(0.0, 1.0)


def epoch_samples(cases: Sequence[PreparedCase], count: int, seed: int, epoch: int,
                  foreground_fraction: float = 0.67, balance_classes: bool = False,
                  edge_fraction: float = 0.0) -> List[Tuple[int, int]]:
    """``count`` (case index, slice index) pairs for one epoch, deterministic in (seed, epoch).

    A ``foreground_fraction`` of the samples come from slices that contain labels, so that
    small organs are seen often; the rest from any slice, so that empty slices stay empty.
    With ``balance_classes`` a labelled draw first picks a class uniformly, then a slice that
    holds it, so that a small organ (pancreas, gallbladder) is drawn as often as the liver.
    An ``edge_fraction`` of the samples then come from :func:`extent_edge_slices` instead: the
    slices where a structure's through-plane extent starts or ends (a heart's base and apex).
    With ``edge_fraction`` 0 the draws are those of earlier versions.
    """
    rng = np.random.default_rng([seed, epoch])
    all_slices = [(c, s) for c, case in enumerate(cases) for s in range(case.image.shape[0])]
    pools = _labelled_pools(cases, balance_classes)
    pool_choice = rng.random(count) < (foreground_fraction if pools else 0.0)
    samples = []
    for from_labelled in pool_choice:
        pool = pools[int(rng.integers(len(pools)))] if from_labelled else all_slices
        samples.append(pool[int(rng.integers(len(pool)))])
    edges = extent_edge_slices(cases) if edge_fraction > 0 else []
    if edges:
        for index in np.flatnonzero(rng.random(count) < edge_fraction):
            samples[index] = edges[int(rng.integers(len(edges)))]
    return samples


def extent_edge_slices(cases: Sequence[PreparedCase]) -> List[Tuple[int, int]]:
    """(case index, slice index) of each volume's first and last labelled slice and the slice
    beyond each (empty, where the stack goes on): where a structure's extent must be decided.

    A slice is labelled if it holds any structure; an unlabelled volume gives none.
    """
    edges = []
    for c, case in enumerate(cases):
        labelled = case.foreground_slices
        if not labelled.size:
            continue
        first, last = int(labelled[0]), int(labelled[-1])
        ends = {first, last, first - 1, last + 1}
        edges.extend((c, s) for s in sorted(ends) if 0 <= s < case.labels.shape[0])
    return edges


def _labelled_pools(cases: Sequence[PreparedCase], per_class: bool) -> List[List[Tuple[int, int]]]:
    """Lists of (case index, slice index): one of all labelled slices, or one per class present."""
    if not per_class:
        labelled = [(c, int(s)) for c, case in enumerate(cases) for s in case.foreground_slices]
        return [labelled] if labelled else []
    pools: dict = {}
    for c, case in enumerate(cases):
        flat = case.labels.reshape(case.labels.shape[0], -1)
        for label in np.unique(flat[flat > 0]):
            pools.setdefault(int(label), []).extend((c, int(s)) for s in np.flatnonzero((flat == label).any(axis=1)))
    return [pools[label] for label in sorted(pools)]


class TrainingSlices:
    """A map-style torch dataset of augmented patches for a fixed list of samples.

    item i -> {"image": (C, h, w) float32 in [0, 1], "label": (h, w) int64}, C = 2 *
    context_slices + 1: the slice and its neighbours in stack order, as inference gives them
    (:func:`dinseg.core.preprocess.neighbour_indices`), one augmentation for all; with probability
    ``context_reversal`` the neighbours come in reverse order, as from a stack stored the other way
    round (apex to base instead of base to apex). Sample i's augmentation is seeded by (seed, i),
    so a run is the same whatever the number of loader workers or processes.
    """

    def __init__(self, cases: Sequence[PreparedCase], samples: Sequence[Tuple[int, int]],
                 augmentation: Optional[Augmentation], patch_size: Tuple[int, int], seed: int,
                 context_slices: int = 0, context_reversal: float = 0.0):
        from monai.data import set_track_meta

        set_track_meta(False)
        self.cases = cases
        self.samples = list(samples)
        self.transform = (augmentation or Augmentation(rotate_degrees=0, scale=0, translate=0, probability=0)
                          ).build(patch_size)
        self.seed = seed
        self.context_slices = context_slices
        self.context_reversal = context_reversal

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch

        case_index, slice_index = self.samples[index]
        case = self.cases[case_index]
        neighbours = neighbour_indices(slice_index, slice_index + 1, self.context_slices, case.image.shape[0])
        if self.context_reversal and np.random.default_rng([self.seed, index]).random() < self.context_reversal:
            neighbours = neighbours[::-1]
        item = {"image": torch.from_numpy(case.image[neighbours]),
                "label": torch.from_numpy(case.labels[slice_index][None].astype(np.float32))}
        self.transform.set_random_state(seed=(self.seed * 1_000_003 + index) % (2 ** 32))
        item = self.transform(item)
        return {"image": torch.as_tensor(item["image"]).float(),
                "label": torch.as_tensor(item["label"])[0].round().long()}
