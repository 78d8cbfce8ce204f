"""Reports and writers of results: ``segfile`` (Slicer ``.seg.nrrd`` and labelmaps), ``dicomseg``
(DICOM SEG), ``statistics`` (per-structure volumes and intensities), ``cardiac`` (ventricular
volumes, ejection fractions, LV mass), ``preview`` (original | enhanced | overlay picture).

Arrays and geometry in, files and tables out. May import ``core`` only.
"""
