"""The enhancement preview in a MRML scene: what the network's second encoder sees, beside the original.

:class:`EnhancementPreviewLogic` makes an enhanced copy of a volume with the engine's own
``normalize`` and ``enhance`` (so it is exactly the network's enhanced input) and puts the two
in linked side-by-side slice views, on MRML nodes only (the same call works headless).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..core.io import check_voxels
from .convert import copy_parent_transform, ijk_to_ras, nodes_by_class, volume_to_image
from .segmentation import card_of

#: display range of enhanced preview volumes (enhanced values 0..1 are scaled to it)
PREVIEW_RANGE = (0.0, 1000.0)


class EnhancementPreviewLogic:
    """Enhanced copies of volumes and the side-by-side layout; scene: the vtkMRMLScene to work in."""

    def __init__(self, scene):
        self.scene = scene

    def enhance(self, volume_node, method: str = "clahe", strength: float = 1.0, model=None, output=None):
        """A new volume "<name> enhanced (<method>)": what the network's enhanced branch sees.

        Intensities are normalised as the model card says (``model`` None: 0.5..99.5 percentile
        of the volume, and the default EnhanceConfig), the engine's ``enhance()`` is applied
        slice by slice and the 0..1 result is scaled to 0..1000 for display. With a model,
        slices are taken along the model's canonical slice axis (axial for abdominal models),
        without it along K; slices keep their native resolution (the network sees them
        resampled to the card's spacing). The output has exactly the input's geometry.
        ``output``: an existing scalar volume node to overwrite instead of a new one.
        """
        import torch

        from ..core.enhance import EnhanceConfig, enhance
        from ..core.preprocess import Normalization, normalize, override_enhancement

        image = volume_to_image(volume_node)
        check_voxels(image.array, volume_node.GetName())
        if model is not None:
            card = card_of(model)
            bounds = card.preprocessing.normalization.bounds(image.array)
            base = card.preprocessing.enhancement
            reorientation = card.preprocessing.reorientation(image.geometry)
        else:
            bounds = Normalization("percentile", 0.5, 99.5).bounds(image.array)
            base = EnhanceConfig()
            reorientation = None
        config = override_enhancement(base, method, strength) or base
        slices = reorientation.to_canonical(image.array) if reorientation else image.array
        enhanced = np.empty(slices.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, slices.shape[0], 16):
                chunk = normalize(np.ascontiguousarray(slices[start:start + 16]), bounds)
                enhanced[start:start + 16] = enhance(torch.from_numpy(chunk).unsqueeze(1), config).squeeze(1).numpy()
        values = reorientation.from_canonical(enhanced) if reorientation else enhanced
        values = np.ascontiguousarray(values * (PREVIEW_RANGE[1] - PREVIEW_RANGE[0]) + PREVIEW_RANGE[0],
                                      dtype=np.float32)
        name = f"{volume_node.GetName()} enhanced ({config.method})"
        node = output or self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        if output is not None:
            node.SetName(name)
        image_data = vtk.vtkImageData()
        image_data.SetDimensions(*values.shape[::-1])
        image_data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values.ravel(), deep=True,
                                                                        array_type=vtk.VTK_FLOAT))
        node.SetIJKToRASMatrix(ijk_to_ras(volume_node))
        node.SetAndObserveImageData(image_data)
        copy_parent_transform(volume_node, node)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(*PREVIEW_RANGE)
        return node

    def side_by_side(self, original, enhanced) -> Dict[str, Any]:
        """What the widget needs to compare two volumes: layout id and each view's background.

        The widget switches the layout (``slicer.app.layoutManager().setLayout(plan["layout"])``)
        and then calls :meth:`show_side_by_side` with the same volumes.
        """
        return {"layout": slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView,
                "views": {"Red": original.GetID(), "Yellow": enhanced.GetID()}, "linked": True}

    def show_side_by_side(self, original, enhanced) -> Dict[str, Any]:
        """Red view = original, Yellow view = enhanced, same orientation, linked slice views.

        Works on MRML nodes only (layout node, slice and slice composite nodes), so the same
        call works headless; views that do not exist (yet) are skipped.
        """
        plan = self.side_by_side(original, enhanced)
        layout = self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is not None and layout.GetViewArrangement() != plan["layout"]:
            layout.SetViewArrangement(plan["layout"])
        slice_nodes = {node.GetLayoutName(): node for node in nodes_by_class(self.scene, "vtkMRMLSliceNode")}
        if "Red" in slice_nodes and "Yellow" in slice_nodes:
            slice_nodes["Yellow"].SetOrientation(slice_nodes["Red"].GetOrientation())
        for composite in nodes_by_class(self.scene, "vtkMRMLSliceCompositeNode"):
            volume_id = plan["views"].get(composite.GetLayoutName())
            if volume_id is not None:
                composite.SetBackgroundVolumeID(volume_id)
                composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
        return plan
