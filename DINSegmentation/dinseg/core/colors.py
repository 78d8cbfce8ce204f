"""The display colour of every structure: one colour-blind-safe palette for the page, the Slicer
module, ``.seg.nrrd`` files and the preview PNG.

The palette is Okabe and Ito's eight colours for colour-blind readers, with Paul Tol's pale pink in
place of black (black vanishes on a scan). Any two of them stay apart in CIELAB (15 units or more)
for normal vision and in simulated protanopia, deuteranopia and tritanopia. Structures a bundled
model segments have a fixed colour, so that a liver is the same colour in every model; within each
bundled model no two structures share one, and the three cardiac structures take the three that
differ most (blue, yellow, vermillion). The SNOMED-CT code stays on every segment; only its colour
comes from here.
"""

from __future__ import annotations

from typing import Dict, Tuple

RGB = Tuple[int, int, int]

ORANGE: RGB = (230, 159, 0)
SKY_BLUE: RGB = (86, 180, 233)
BLUISH_GREEN: RGB = (0, 158, 115)
YELLOW: RGB = (240, 228, 66)
BLUE: RGB = (0, 114, 178)
VERMILLION: RGB = (213, 94, 0)
REDDISH_PURPLE: RGB = (204, 121, 167)
PALE_PINK: RGB = (255, 170, 187)

#: the palette, in the order structures without a fixed colour take it
PALETTE: Tuple[RGB, ...] = (VERMILLION, SKY_BLUE, YELLOW, BLUISH_GREEN, REDDISH_PURPLE, BLUE, ORANGE, PALE_PINK)

#: the fixed colour of each structure the bundled models segment
STRUCTURE_COLORS: Dict[str, RGB] = {
    "aorta": YELLOW,
    "gallbladder": BLUISH_GREEN,
    "left kidney": BLUE,
    "right kidney": PALE_PINK,
    "liver": VERMILLION,
    "pancreas": ORANGE,
    "spleen": REDDISH_PURPLE,
    "stomach": SKY_BLUE,
    "right ventricle": BLUE,
    "myocardium": YELLOW,
    "left ventricle": VERMILLION,
}


def structure_color(name: str, value: int) -> RGB:
    """The display colour of structure ``name`` (label ``value``, 1..255): its fixed colour, or the
    palette's colour for that label value."""
    return STRUCTURE_COLORS.get(name, PALETTE[(value - 1) % len(PALETTE)])


def hex_color(rgb: RGB) -> str:
    """``#rrggbb`` for the page."""
    return "#%02x%02x%02x" % tuple(rgb)
