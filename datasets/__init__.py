"""Dataset converters into the canonical form, and the synthetic mammogram generator.

One module per published source (``cbis_ddsm``, ``inbreast``, ``bcdr``, ``mias``, ``vindr``; run as
``python -m datasets.<source> --root RAW --out OUT``), each a :class:`datasets.converter.Converter`
that holds only its format. What they share: ``converter`` (the conversion skeleton and command line),
``shapes`` and ``calc_mask`` (annotations -> masks, boxes, typed calcification components),
``tables`` (reading a download, the problem report), ``splits`` and ``output`` (patient split, the
canonical files, the staged output folder); ``canonical`` is the one import for all of them.
``synthetic`` generates canonical folders of synthetic mammograms.
"""
