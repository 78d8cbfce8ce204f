"""A real, headless 3D Slicer scene for tests, built from ``slicer-core`` (no Qt, no mocks).

The scene has Slicer's application logic and the Colors, Terminologies, Volumes,
Segmentations, Sequences and Subject Hierarchy module logics, registered the way the Slicer
application does it, with share files (colour tables, Slicer's general anatomy terminology)
from ``Testing/slicer_share`` (copied from Slicer's source, Slicer license).
Only ``import slicer`` needs to work (slicer-core has wheels for Python >= 3.10).
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np

SHARE_HOME = Path(__file__).resolve().parent / "slicer_share"
SHARE_DIRECTORY = "share"  # relative to SHARE_HOME, like Slicer's <home>/share/Slicer-X.Y


def make_scene() -> types.SimpleNamespace:
    """A new scene with its logics: ``env.scene``, ``env.volumes_logic``, ``env.segmentations_logic``,
    ``env.sequences_logic``, ``env.terminologies_logic``, ``env.color_logic``, ``env.app_logic``."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetHomeDirectory(str(SHARE_HOME))
    app_logic.SetShareDirectory(SHARE_DIRECTORY)
    app_logic.SetMRMLScene(scene)

    def register(logic, name, share_sub_folder=None):
        if share_sub_folder is not None:
            # before SetMRMLScene: the Terminologies logic loads its default files there
            logic.SetModuleShareDirectory(str(SHARE_HOME / SHARE_DIRECTORY / share_sub_folder))
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        return logic

    env = types.SimpleNamespace(scene=scene, app_logic=app_logic)
    env.color_logic = register(slicer.vtkSlicerColorLogic(), "Colors")
    if hasattr(app_logic, "SetColorLogic"):
        app_logic.SetColorLogic(env.color_logic)
    env.terminologies_logic = register(slicer.vtkSlicerTerminologiesModuleLogic(), "Terminologies", "terminologies")
    env.volumes_logic = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    env.segmentations_logic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    env.sequences_logic = register(slicer.vtkSlicerSequencesLogic(), "Sequences")
    env.subject_hierarchy_logic = register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
    return env


def node_ids(scene) -> list:
    """IDs of every node in the scene, in scene order."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def load_volume(env, path, name: str):
    """Load an image file with Slicer's own reader (Volumes logic, as File > Add Data does)."""
    node = env.volumes_logic.AddArchetypeVolume(str(path), name)
    if node is None:
        raise RuntimeError(f"Slicer could not read {path}")
    return node


def add_volume(env, array: np.ndarray, ijk_to_ras: np.ndarray, name: str):
    """A scalar volume node from a (z, y, x) array and a 4x4 IJK-to-RAS matrix."""
    node = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    from dinseg.slicer.convert import set_volume_voxels

    set_volume_voxels(node, array, ijk_to_ras)
    node.CreateDefaultDisplayNodes()
    return node
