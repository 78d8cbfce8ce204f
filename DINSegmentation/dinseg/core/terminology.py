"""Segment names, colours and SNOMED-CT codes, and their 3D Slicer serialisation (colours: :mod:`.colors`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .colors import STRUCTURE_COLORS, structure_color
from .errors import ConfigError


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning (DICOM style)."""

    scheme: str
    value: str
    meaning: str

    def to_list(self) -> List[str]:
        return [self.scheme, self.value, self.meaning]

    @classmethod
    def from_list(cls, items: Sequence[str]) -> "Code":
        if len(items) != 3:
            raise ConfigError(f"a code needs [scheme, value, meaning], got {items!r}")
        return cls(*(str(item) for item in items))


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")


@dataclass(frozen=True)
class LabelInfo:
    """One segment of a model's output: label value, display name, RGB colour, terminology."""

    value: int
    name: str
    color: Tuple[int, int, int]
    type: Code
    category: Code = ANATOMICAL_STRUCTURE
    modifier: Optional[Code] = None

    def to_dict(self) -> Dict[str, Any]:
        data = {"value": self.value, "name": self.name, "color": list(self.color),
                "category": self.category.to_list(), "type": self.type.to_list()}
        if self.modifier:
            data["modifier"] = self.modifier.to_list()
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "LabelInfo":
        unknown = sorted(set(data) - {"value", "name", "color", "category", "type", "modifier"})
        if unknown:
            raise ConfigError(f"unknown label key(s): {', '.join(unknown)}")
        color = tuple(int(c) for c in data["color"])
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ConfigError(f"label {data.get('name')!r}: colour must be three values 0..255")
        value = int(data["value"])
        if not 1 <= value <= 255:
            raise ConfigError(f"label {data.get('name')!r}: value must be 1..255 (0 is background)")
        return cls(value=value, name=str(data["name"]), color=color, type=Code.from_list(data["type"]),
                   category=Code.from_list(data.get("category", ANATOMICAL_STRUCTURE.to_list())),
                   modifier=Code.from_list(data["modifier"]) if data.get("modifier") else None)

    @property
    def color_float(self) -> Tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)


_LEFT = Code("SCT", "7771000", "Left")
_RIGHT = Code("SCT", "24028007", "Right")
_KIDNEY = Code("SCT", "64033007", "Kidney")

#: Structures the bundled models segment, by name: (type, modifier, display colour)
KNOWN_STRUCTURES: Dict[str, Tuple[Code, Optional[Code], Tuple[int, int, int]]] = {
    "aorta": (Code("SCT", "15825003", "Aorta"), None, STRUCTURE_COLORS["aorta"]),
    "gallbladder": (Code("SCT", "28231008", "Gallbladder"), None, STRUCTURE_COLORS["gallbladder"]),
    "left kidney": (_KIDNEY, _LEFT, STRUCTURE_COLORS["left kidney"]),
    "right kidney": (_KIDNEY, _RIGHT, STRUCTURE_COLORS["right kidney"]),
    "liver": (Code("SCT", "10200004", "Liver"), None, STRUCTURE_COLORS["liver"]),
    "pancreas": (Code("SCT", "15776009", "Pancreas"), None, STRUCTURE_COLORS["pancreas"]),
    "spleen": (Code("SCT", "78961009", "Spleen"), None, STRUCTURE_COLORS["spleen"]),
    "stomach": (Code("SCT", "69695003", "Stomach"), None, STRUCTURE_COLORS["stomach"]),
    "right ventricle": (Code("SCT", "53085002", "Right ventricle"), None, STRUCTURE_COLORS["right ventricle"]),
    "myocardium": (Code("SCT", "74281007", "Myocardium"), None, STRUCTURE_COLORS["myocardium"]),
    "left ventricle": (Code("SCT", "87878005", "Left ventricle"), None, STRUCTURE_COLORS["left ventricle"]),
}

#: The Synapse multi-organ benchmark's 8 organs in label order 1..8 (TransUNet, DIN)
SYNAPSE_ORGANS = ("aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach")
#: ACDC's classes in label order 1..3
ACDC_STRUCTURES = ("right ventricle", "myocardium", "left ventricle")


GENERIC_STRUCTURE = Code("SCT", "91723000", "Anatomical structure")


def label_infos_for(names: Sequence[str]) -> List[LabelInfo]:
    """LabelInfo for class names, valued 1..N in order: known codes and colours where we have them,
    otherwise a generic "Anatomical structure" code (a warning says which) and a palette colour
    (:func:`.colors.structure_color`)."""
    labels = []
    for value, name in enumerate(names, start=1):
        if name in KNOWN_STRUCTURES:
            code, modifier, color = KNOWN_STRUCTURES[name]
        else:
            logging.getLogger("dinseg").warning("no SNOMED-CT code known for %r; using a generic one", name)
            code, modifier, color = GENERIC_STRUCTURE, None, structure_color(name, value)
        labels.append(LabelInfo(value=value, name=name, color=color, type=code, modifier=modifier))
    return labels


def segment_id(label: LabelInfo) -> str:
    """The segment ID of a label in our ``.seg.nrrd`` files and Slicer segmentation nodes."""
    return f"Segment_{label.value}"


#: Context names used in Slicer terminology entries (our shipped terminology file defines the first)
TERMINOLOGY_CONTEXT = "Segmentation category and type - DINSegmentation"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def slicer_terminology_entry(label: LabelInfo) -> str:
    """Slicer's ``TerminologyEntry`` tag value: context~category~type~type modifier~anatomic context~region~region modifier."""
    modifier = "^".join(label.modifier.to_list()) if label.modifier else "^^"
    return "~".join([TERMINOLOGY_CONTEXT, "^".join(label.category.to_list()), "^".join(label.type.to_list()),
                     modifier, ANATOMIC_CONTEXT, "^^", "^^"])
