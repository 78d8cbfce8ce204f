"""The browser front end (``dinseg web``): trame-slicer's views and Segment Editor over dinseg's MRML logic.

Needs the ``web`` extra (``pip install 'dinseg[web]'``, Python 3.10 or later); nothing else in
dinseg imports this package.
"""
