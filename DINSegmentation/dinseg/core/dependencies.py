"""The optional Python packages each feature needs, at which version, in one table.

The Slicer module installs what is missing or too old (with the user's consent) before a button
that needs it runs; ``pyproject.toml`` states the same minimums. Only the standard library
here: this runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Dict, List, Optional, Sequence, Tuple

#: distribution name -> minimum version
MINIMUM_VERSIONS: Dict[str, str] = {
    "torch": "2.1",
    "highdicom": "0.22",
    "monai": "1.3",
    "scipy": "1.8",
    "PyYAML": "6",
    "h5py": "3",
    "dask": "2024.1",
    "distributed": "2024.1",
    "pyarrow": "14",
}

#: feature -> the distributions it needs
FEATURES: Dict[str, Tuple[str, ...]] = {
    "segment": ("torch",),
    "dicom-seg": ("highdicom",),
    "train": ("torch", "monai", "scipy", "PyYAML", "h5py"),
    "cohort": ("dask", "distributed", "pyarrow"),
}


def version_key(version: str) -> Tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the leading numeric release parts (pre/post/local tags ignored)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    parts = [int(part) for part in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution, None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirement(distribution: str) -> str:
    """'torch>=2.1': the pip requirement for a distribution of the table."""
    return f"{distribution}>={MINIMUM_VERSIONS[distribution]}"


def unmet(distributions: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """(distribution, installed version or None) for each one missing or older than its minimum."""
    found = []
    for distribution in distributions:
        version = installed_version(distribution)
        if version is None or version_key(version) < version_key(MINIMUM_VERSIONS[distribution]):
            found.append((distribution, version))
    return found


def unmet_for(feature: str) -> List[Tuple[str, Optional[str]]]:
    """:func:`unmet` for the distributions of a feature of :data:`FEATURES`."""
    return unmet(FEATURES[feature])
