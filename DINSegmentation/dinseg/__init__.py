"""dinseg: the DINSegmentation engine (Dual Interaction Network organ segmentation).

One file-level call, as the command line, the Slicer module's job and the web page use it::

    import dinseg
    result = dinseg.segment_file("ct.nii.gz", "ct.seg.nrrd", dinseg.SegmentOptions(device="cpu"))

Layers, each a subpackage whose docstring says what it may import (imports go down only, and
``Testing/test_layers.py`` checks it): ``core`` < ``nets`` < ``models`` < ``reports`` <
``pipeline`` < ``training`` < ``slicer`` < ``apps``. Importable without 3D Slicer or Qt
(only ``slicer`` and ``apps.web`` need Slicer's MRML), and without importing torch.
"""

__version__ = "0.1.0"  # before the imports below: the layers read it

from .pipeline.files import segment_file, segment_files  # noqa: E402
from .pipeline.options import SegmentOptions  # noqa: E402

__all__ = ["SegmentOptions", "__version__", "segment_file", "segment_files"]
