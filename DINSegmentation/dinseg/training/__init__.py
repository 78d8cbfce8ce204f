"""Training and measuring models: ``train`` (DINTrainingLogic), ``config`` (TrainConfig, torch-free),
``losses`` (CE + Dice + Sobel boundary), ``data`` (dataset readers, splits, slice sampling),
``evaluate`` (Dice, HD95 and cardiac agreement per case), ``calibrate`` (class-prior weights),
``ablation`` (fusion variants), ``synth`` (synthetic phantoms for tests).

May import ``core``, ``nets``, ``models``, ``reports`` and ``pipeline`` (evaluation runs the
Segmenter); nothing in ``slicer`` or ``apps``.
"""
