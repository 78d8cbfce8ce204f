"""Interactive correction by clicks ("click to correct"): the engine side, no MRML or Qt.

A class-agnostic refinement network takes an image crop around one structure, that structure's
current mask and maps of the user's positive and negative clicks, and returns the corrected mask.

Modules: ``clicks`` (click maps in mm and the robot user), ``crop`` (the network's view of a
structure and the way back to the volume grid), ``network`` (the refinement net and its
configuration), ``card`` (the refiner's own model card, SHA-256-checked weights) and ``refiner``
(the engine API). Training (``dinseg.training.refiner``) and the click benchmark
(``dinseg.training.click_benchmark``) live in the training layer.

May import ``dinseg.core``, ``dinseg.nets`` and ``dinseg.models``; nothing above them. Importing this package does not import torch.
Arrays are (z, y, x); points inside the package are (z, y, x) voxel indices unless named otherwise.
"""
