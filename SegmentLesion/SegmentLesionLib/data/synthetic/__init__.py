"""Seeded generators of training cases with exact lesion masks (numpy / scipy / SimpleITK only).

Two generators, both built from real anatomy (never MNI152, which is kept for independent evaluation):

- ``insertion``: lesions inserted into the real Colin27 T1 MRI (the bundled default model's training data).
- ``randomised``: domain-randomised cases in the manner of SynthSeg (Billot et al., Medical Image Analysis
  2023): whole-head label maps of real anatomies (Colin27 + AAL, the ROBEX atlas), deformed, with lesions and
  hard negatives, turned into images with random intensities per label and a random acquisition.

This subpackage is for training and benchmarks only: nothing Slicer imports at run time (``ui``, ``runtime``,
``engine``) imports it. Its command line is ``segment-lesion synthesize`` (``cli/synthesize.py``).

Modules: ``template`` (Colin27), ``geometry`` (spacing, orientation, pose, random streams), ``shapes``
(irregular bodies), ``lesions`` (insertion into Colin27), ``acquisition`` (grid, anti-aliasing, bias, noise),
``insertion`` (the insertion case), ``writer`` (nnU-Net v2 dataset), and for the randomised generator
``anatomy`` (label maps), ``deformation``, ``randomised_lesions`` (lesions, hard negatives), ``contrast``
(intensity families), ``randomised`` (the randomised case).
"""

from __future__ import annotations

from ...engine.preprocess import orientation_direction
from .geometry import ORIENTATIONS, Geometry, draw_geometry
from .insertion import SyntheticCase, generate_case, generate_case_details
from .lesions import MAX_LESION_ML, MAX_LESIONS, MIN_LESION_ML, POLARITIES, LesionInfo
from .randomised import RandomisedCase, draw_acquisition, generate_randomised_case
from .template import COLIN27_DIR, COLIN27_DIR_ENV, colin27_available, colin27_dir
from .writer import parse_seeds, write_dataset, write_randomised_dataset

__all__ = [
    "COLIN27_DIR",
    "COLIN27_DIR_ENV",
    "MAX_LESIONS",
    "MAX_LESION_ML",
    "MIN_LESION_ML",
    "ORIENTATIONS",
    "POLARITIES",
    "Geometry",
    "LesionInfo",
    "RandomisedCase",
    "SyntheticCase",
    "colin27_available",
    "colin27_dir",
    "draw_acquisition",
    "draw_geometry",
    "generate_case",
    "generate_case_details",
    "generate_randomised_case",
    "orientation_direction",
    "parse_seeds",
    "write_dataset",
    "write_randomised_dataset",
]
