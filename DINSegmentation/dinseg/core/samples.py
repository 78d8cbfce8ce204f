"""The bundled sample images, usable as INPUT ``sample:NAME`` wherever a path is taken."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "sample"
#: bundled sample images by name
SAMPLES = {"abdomen-ct": SAMPLES_DIR / "abdomen_ct.nii.gz", "abdomen-mr": SAMPLES_DIR / "abdomen_mr.nii.gz"}


def resolve_input(name) -> Path:
    """A path (str or Path), or ``sample:NAME`` for a bundled sample image."""
    name = str(name)
    if name.startswith("sample:"):
        key = name[len("sample:"):]
        if key not in SAMPLES:
            raise InputError(f"unknown sample {key!r}; bundled samples: {', '.join(SAMPLES)}")
        return SAMPLES[key]
    return Path(name)
