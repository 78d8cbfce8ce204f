"""Engine images into the MRML scene of the web front end: a volume node, or a cine as a browsed sequence."""

from __future__ import annotations

import slicer

from ...core.io import ImageVolume
from ...slicer.convert import set_volume_voxels


def add_image(scene, sequences_logic, image: ImageVolume, name: str):
    """Put an engine image into the scene; returns (volume node, browser node or None).

    A 3D image becomes a scalar volume node; a 4D cine becomes a volume sequence (one item per
    frame) with a sequence browser, and the returned volume is the browser's proxy node.
    """
    index_to_ras = image.geometry.index_to_ras()
    if image.array.ndim == 3:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        set_volume_voxels(node, image.array, index_to_ras)
        node.CreateDefaultDisplayNodes()
        return node, None
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("frame")
    sequence.SetIndexUnit("")
    frame_node = slicer.vtkMRMLScalarVolumeNode()
    for number, frame in enumerate(image.array, start=1):
        set_volume_voxels(frame_node, frame, index_to_ras)
        sequence.SetDataNodeAtValue(frame_node, str(number))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    proxy.SetName(name)
    if proxy.GetDisplayNode() is None:
        proxy.CreateDefaultDisplayNodes()
    return proxy, browser
