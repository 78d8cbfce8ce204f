"""The 3D Slicer side of the engine: MRML nodes in and out. The only place that imports ``slicer``.

Needs Slicer's MRML: desktop 3D Slicer, or Kitware's ``slicer-core`` wheel (headless, used by
the tests). Plain Python over MRML: no Qt, no ``slicer.app``, so the same code runs in the
Slicer GUI, its Python console, ``Slicer --no-main-window`` and pytest. ``convert`` turns
nodes into arrays and back; ``segmentation``, ``job``, ``preview`` and ``reports`` hold the
logic; ``logic.DINSegmentationMRMLLogic`` gathers them for one scene.

May import ``core``, ``models``, ``reports``, ``pipeline``; nothing in ``apps``. torch, SimpleITK
and monai are imported inside the functions that need them: loading stays cheap.
"""
