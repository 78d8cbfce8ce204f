"""The pipeline: read, choose the model, check, segment, write.

``options.SegmentOptions`` (what a GUI, the CLI or Python chooses), ``segmenter.Segmenter`` (one
model card on arrays), ``files.segment_file`` / ``files.segment_files`` (file to file, one image
or a batch), ``job.SegmentationProcess`` (the same in a child process with progress and Cancel).

May import ``core``, ``nets``, ``models`` and ``reports`` (the writers); nothing above (no
training, no Slicer, no apps).
"""
