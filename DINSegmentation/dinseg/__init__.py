"""dinseg: the DINSegmentation engine (Dual Interaction Network organ segmentation).

Importable without 3D Slicer or Qt. Submodules are imported on use so that
``import dinseg`` stays light (no torch import here).
"""

__version__ = "0.1.0"
