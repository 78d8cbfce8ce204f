"""Reports from segmentations in a MRML scene: statistics tables, cardiac function, DICOM SEG.

:class:`ReportLogic` reads a segmentation node back as labels on its volume's grid and hands
them to the engine's reports (``dinseg.reports``); a DICOM SEG is coded with the model card
the segmentation was made with (recorded on the node), never with whatever model is selected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
import slicer
import vtk

from ..core.errors import InputError
from .convert import model_of, segment_label_infos, segmentation_to_labels, volume_to_image
from .segmentation import card_of


class ReportLogic:
    """Tables, plots and files made from segmentation nodes; scene: the vtkMRMLScene to work in."""

    def __init__(self, scene):
        self.scene = scene

    @staticmethod
    def dicom_source_files(volume_node, database=None) -> List[str]:
        """The DICOM files a volume was loaded from (Slicer's DICOM database), [] if none."""
        uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not uids or database is None:
            return []
        files = [database.fileForInstance(uid) for uid in uids]
        return [f for f in files if f]

    @staticmethod
    def card_for_saving(segmentation_node, model=None):
        """The model card a segmentation is saved with: ``model`` if given, else the card recorded on
        the node when it was made (an InputError if it carries none: name the model)."""
        if model is not None:
            return card_of(model)
        card = model_of(segmentation_node)
        if card is None:
            raise InputError(f"{segmentation_node.GetName()}: not made by a DIN model; name the model whose "
                             "labels it holds")
        return card

    def save_dicom_seg(self, segmentation_node, volume_node, source_files: Sequence[str], path, model=None):
        """Write the segmentation as a DICOM SEG referencing the volume's source series (``source_files``,
        any order); segments are named and coded as the model card that made it says (recorded on the
        node), or as ``model`` says where given."""
        from ..reports.dicomseg import order_by_slice, write_dicom_seg

        image = volume_to_image(volume_node)
        card = self.card_for_saving(segmentation_node, model)
        image.source_files = order_by_slice(source_files, image.geometry)
        labels = segmentation_to_labels(segmentation_node, volume_node, card.labels)
        write_dicom_seg(path, labels, image, card.labels, card.name, card.version)
        return Path(path)

    def save_dicom_seg_to_database(self, segmentation_node, volume_node, database, import_folder,
                                   model=None, temp_root=None) -> Path:
        """Write the DICOM SEG of a segmentation of a volume loaded from ``database`` (Slicer's
        DICOM database) into a temporary folder, import it with ``import_folder(folder)`` (in
        Slicer: ``DICOMUtils.importDicom(folder, copyFiles=True)``, so that the database keeps its
        own copy) and remove the folder. The import counts only where the database then holds the
        new instance (a False from the import, or a file the indexer skipped, is an error).
        Returns the written file's path (gone once imported)."""
        import shutil
        import tempfile

        files = self.dicom_source_files(volume_node, database)
        if not files:
            raise InputError(f"{volume_node.GetName()}: was not loaded from the DICOM database; "
                             "DICOM SEG references the source series")
        folder = Path(tempfile.mkdtemp(prefix="DINSegmentation-", dir=temp_root))
        try:
            path = self.save_dicom_seg(segmentation_node, volume_node, files, folder / "segmentation.dcm", model)
            import pydicom

            instance = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            # importDicom returns True even where the indexer skipped the file: ask the database
            if not import_folder(str(folder)) or not database.fileForInstance(instance):
                raise RuntimeError(f"the DICOM database did not import {path.name}")
            return path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def statistics_table(self, segmentation_node, volume_node, name: Optional[str] = None):
        """A table node of each segment's volume, intensity statistics, centroid (LPS) and bounding
        box on the volume's grid (the numbers of ``dinseg segment --statistics``)."""
        from ..reports.statistics import structure_statistics

        infos = segment_label_infos(segmentation_node)
        image = volume_to_image(volume_node)
        rows = structure_statistics(segmentation_to_labels(segmentation_node, volume_node), image.array,
                                    image.geometry, infos)
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name or f"{segmentation_node.GetName()} statistics")
        columns = [key for key in rows[0] if key not in ("label", "frame")]
        for key in columns:
            column = vtk.vtkStringArray() if key == "structure" else vtk.vtkDoubleArray()
            column.SetName(key)
            for row in rows:
                value = row[key]
                column.InsertNextValue(value if key == "structure" else (np.nan if value is None else float(value)))
            table.AddColumn(column)
        return table

    def cardiac_function(self, segmentation_nodes: Sequence[Any], volume_nodes: Sequence[Any],
                         ed_frame: Optional[int] = None, es_frame: Optional[int] = None,
                         height_cm: Optional[float] = None, weight_kg: Optional[float] = None,
                         name: str = "DIN cardiac function"):
        """Cardiac function of segmented frames, shown as a table and a volume curve.

        segmentation_nodes[i] segments volume_nodes[i] (frames in time order: a cine's
        frames, or an ED and an ES volume); segments are recognised by name (right ventricle,
        myocardium, left ventricle). All volumes must share one grid. ed_frame / es_frame are
        0-based (default: largest / smallest LV). Everything is computed before the scene is
        touched. Returns (CardiacFunction, table node, plot chart node).
        """
        from ..reports.cardiac import cardiac_function

        if len(segmentation_nodes) != len(volume_nodes):
            raise InputError(f"{len(segmentation_nodes)} segmentations for {len(volume_nodes)} volumes")
        if not volume_nodes:
            raise InputError("no frames: cardiac function needs an ED and an ES frame at least")
        grid = volume_to_image(volume_nodes[0]).geometry
        for volume in volume_nodes[1:]:
            if not volume_to_image(volume).geometry.matches(grid):
                raise InputError(f"{volume.GetName()}: lies on another grid than {volume_nodes[0].GetName()}; "
                                 "the frames must come from one acquisition")
        infos = segment_label_infos(segmentation_nodes[0])
        labels = [segmentation_to_labels(node, volume) for node, volume in zip(segmentation_nodes, volume_nodes)]
        result = cardiac_function(labels, grid.spacing, infos, ed_frame=ed_frame, es_frame=es_frame,
                                  height_cm=height_cm, weight_kg=weight_kg)
        table, chart = self.show_cardiac_function(result, name)
        return result, table, chart

    def cardiac_function_of_sequence(self, segmentation_sequence, volume_sequence, **options):
        """:meth:`cardiac_function` of every frame of a segmentation sequence (from
        :meth:`segment_sequence`) and its volume sequence; frames matched by index value."""
        segmentations, volumes = [], []
        for index in range(volume_sequence.GetNumberOfDataNodes()):
            value = volume_sequence.GetNthIndexValue(index)
            segmentation = segmentation_sequence.GetDataNodeAtValue(value)
            if segmentation is None:
                raise InputError(f"{volume_sequence.GetName()}: frame {index + 1} is not segmented; segment all frames")
            segmentations.append(segmentation)
            volumes.append(volume_sequence.GetNthDataNode(index))
        return self.cardiac_function(segmentations, volumes, **options)

    def show_cardiac_function(self, result, name: str = "DIN cardiac function"):
        """A table node of the figures and a plot chart of LV and RV volume per frame (new nodes)."""
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        columns = [vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray(), vtk.vtkDoubleArray()]
        for column, title in zip(columns, ("quantity", "value", "unit", "per m2 body surface")):
            column.SetName(title)
        rows = [("ED frame (1 = first)", result.ed_frame + 1, "", None),
                ("ES frame (1 = first)", result.es_frame + 1, "", None)]
        rows += [(label, result.figures.get(key), unit, result.indexed(key)) for key, label, unit in result.ROWS]
        for label, value, unit, indexed in rows:
            columns[0].InsertNextValue(label)
            columns[1].InsertNextValue(np.nan if value is None else float(value))
            columns[2].InsertNextValue(unit)
            columns[3].InsertNextValue(np.nan if indexed is None else float(indexed))
        for column in columns:
            table.AddColumn(column)

        curves = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} volumes")
        frame_column = vtk.vtkDoubleArray()
        frame_column.SetName("frame")
        for frame in range(result.frames):
            frame_column.InsertNextValue(frame + 1)
        curves.AddColumn(frame_column)
        chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
        chart.SetTitle("ventricular volume over the cardiac cycle")
        chart.SetXAxisTitle("frame (1 = first)")
        chart.SetYAxisTitle("volume (mL)")
        for key, title, colour in (("lv", "LV volume (mL)", (0.84, 0.15, 0.16)),
                                   ("rv", "RV volume (mL)", (0.12, 0.47, 0.71))):
            if key not in result.volumes_ml:
                continue
            column = vtk.vtkDoubleArray()
            column.SetName(title)
            for value in result.volumes_ml[key]:
                column.InsertNextValue(value)
            curves.AddColumn(column)
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {key.upper()}")
            series.SetAndObserveTableNodeID(curves.GetID())
            series.SetXColumnName("frame")
            series.SetYColumnName(title)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetColor(*colour)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return table, chart
