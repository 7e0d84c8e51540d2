"""SegmentLesion: AI lesion segmentation with a radiologist in the loop.

The package is split so that each part imports only what it needs:

- ``volume``, ``postprocess``, ``metrics``, ``writers``: numpy / SimpleITK only.
- ``model``, ``inference``, ``training``: torch and MONAI (the engine).
- ``mrml``: the Slicer MRML glue (never imports torch).
"""

__version__ = "0.1.0"
