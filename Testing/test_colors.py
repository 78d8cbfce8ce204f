"""Every structure has one distinct, colour-blind-safe display colour, the same wherever it is shown."""

from __future__ import annotations

import pytest

from cielab import DEFICIENCIES, smallest_difference

from dinseg.core.colors import PALETTE, STRUCTURE_COLORS, hex_color, structure_color
from dinseg.core.terminology import ACDC_STRUCTURES, KNOWN_STRUCTURES, SYNAPSE_ORGANS, label_infos_for

#: the smallest CIELAB distance (delta E 1976) between two structures of one model, in any vision
DISTINCT = 15.0
VISIONS = ("normal", *DEFICIENCIES)


def bundled_cards():
    from dinseg.models import list_models

    return [card for card in list_models() if card.path is not None and "assets" in card.path.parts]


def test_the_palette_stays_apart_for_every_vision():
    for vision in VISIONS:
        assert smallest_difference(PALETTE, vision) >= DISTINCT, vision


@pytest.mark.parametrize("names", [SYNAPSE_ORGANS, ("liver", "right kidney", "left kidney", "spleen"),
                                   ACDC_STRUCTURES], ids=["ct", "mr", "cardiac"])
def test_each_models_structures_differ_for_every_vision(names):
    colors = [structure_color(name, value) for value, name in enumerate(names, start=1)]
    for vision in VISIONS:
        assert smallest_difference(colors, vision) >= DISTINCT, (names, vision)


def test_the_cardiac_structures_differ_most():
    colors = [STRUCTURE_COLORS[name] for name in ACDC_STRUCTURES]
    assert min(smallest_difference(colors, vision) for vision in VISIONS) > 30


def test_bundled_cards_and_terminology_carry_the_palette():
    cards = bundled_cards()
    assert {card.name for card in cards} >= {"btcv-ct-light", "chaos-mr-light", "acdc-light"}
    for card in cards:
        for label in card.labels:
            assert label.color == STRUCTURE_COLORS[label.name], (card.name, label.name)
        assert smallest_difference([label.color for label in card.labels]) >= DISTINCT, card.name
    assert {name: color for name, (_code, _modifier, color) in KNOWN_STRUCTURES.items()} == STRUCTURE_COLORS


def test_unknown_structures_take_palette_colours_in_label_order():
    infos = label_infos_for(["tumour", "cyst", "liver"])
    assert [info.color for info in infos] == [PALETTE[0], PALETTE[1], STRUCTURE_COLORS["liver"]]
    assert hex_color((213, 94, 0)) == "#d55e00"
