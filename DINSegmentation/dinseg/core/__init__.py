"""Core: images and what is done to them before and after the network, with no network in sight.

``io`` (reading, the one verified writer ``atomic_output``, input checks), ``geometry`` (grids,
LPS/RAS, reorientation), ``preprocess`` (spacing, normalisation, enhancement settings),
``enhance`` (CLAHE, gamma, unsharp), ``postprocess`` (clean-up), ``colors`` (the display palette),
``terminology`` (names, colours, SNOMED-CT codes), ``metrics`` (Dice, HD95), ``samples`` (bundled images), ``dependencies`` (the
optional packages and their minimum versions), ``errors`` (the one-line errors users see).

May import nothing else of dinseg: every other layer stands on this one.
"""
