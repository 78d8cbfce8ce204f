"""The applications on top of the engine: ``cli`` and ``commands`` (``dinseg ...``), ``web``
(``dinseg web`` in the browser), ``bench`` (the benchmark tables).

The top layer: may import every other; nothing imports it, except the child process that
``pipeline.job`` starts by module name (``python -m dinseg.apps.cli``).
"""
