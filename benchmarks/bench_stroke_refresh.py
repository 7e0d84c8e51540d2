"""One Segment Editor stroke's lesion-table refresh on a 512x512x300 CT, with the real slicer-core scene.

A result with ten lesions is imported into a real ``vtkMRMLScene``; then strokes are painted as the Paint
effect does (a small sphere merged into the segment with ``SetBinaryLabelmapToSegment`` over its extent), each
followed by ``lesion_table`` (what the panel runs after the debounce). The first table (after import) measures
every lesion; each stroke's refresh measures only the lesions near the changed voxels. Prints the median and
worst stroke refresh against the full recomputation (merged labelmap + every lesion), and checks both tables
agree. Target: under 100 ms per stroke.

Usage: python benchmarks/bench_stroke_refresh.py [--strokes 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SegmentLesion"))

from SegmentLesionLib.engine import postprocess  # noqa: E402
from SegmentLesionLib.models.spec import LabelInfo  # noqa: E402
from SegmentLesionLib.ui import geometry, mrml  # noqa: E402

SHAPE_KJI = (300, 512, 512)
SPACING = (0.7, 0.7, 1.0)


def make_case(folder: Path) -> tuple[Path, Path]:
    image = sitk.Image(SHAPE_KJI[2], SHAPE_KJI[1], SHAPE_KJI[0], sitk.sitkInt16)
    image.SetSpacing(SPACING)
    labels = np.zeros(SHAPE_KJI, np.uint8)
    rng = np.random.default_rng(0)
    grid = np.indices((21, 31, 31)) - np.array([10, 15, 15])[:, None, None, None]
    ball = (grid[0] / 10.0) ** 2 + (grid[1] / 15.0) ** 2 + (grid[2] / 15.0) ** 2 <= 1
    for k, j, i in rng.integers((20, 30, 30), (280, 480, 480), (10, 3)):
        labels[k - 10 : k + 11, j - 15 : j + 16, i - 15 : i + 16] |= ball
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "ct.nrrd"))
    sitk.WriteImage(label_image, str(folder / "labels.nrrd"))
    return folder / "ct.nrrd", folder / "labels.nrrd"


def paint(logic: mrml.LesionSegmentationLogic, node, volume, centre_kji, radius: int = 4) -> None:
    """A Paint-effect stroke: a sphere merged into the segment over the sphere's extent only."""
    k, j, i = centre_kji
    stroke = slicer.vtkOrientedImageData()
    stroke.SetExtent(i - radius, i + radius, j - radius, j + radius, k - radius, k + radius)
    stroke.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    offsets = np.indices((2 * radius + 1,) * 3) - radius
    geometry.image_array(stroke)[:] = (offsets**2).sum(axis=0) <= radius**2
    stroke.SetImageToWorldMatrix(geometry.numpy_to_matrix(geometry.ijk_to_ras(volume)))
    logic.segmentations_logic.SetBinaryLabelmapToSegment(
        stroke, node, "Segment_1", logic.segmentations_logic.MODE_MERGE_MAX, stroke.GetExtent()
    )


def full_table(logic, node, volume) -> tuple[list, float]:
    start = time.perf_counter()
    labels = logic.labelmap_array(node, volume)
    found = postprocess.find_lesions(labels > 0, SPACING, threshold=0.5, fill_holes=False, classes=labels)
    table = postprocess.lesion_table(found.components, found.count, geometry.ijk_to_ras(volume), None, found.labelmap)
    return table, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        image_path, labels_path = make_case(Path(temp))
        logic = mrml.LesionSegmentationLogic(slicer.vtkMRMLScene())
        volume = logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(image_path))
        assert storage.ReadData(volume)
        node = logic.import_result(volume, labels_path, [LabelInfo(1, "Lesion", [1.0, 0.3, 0.2])], show_3d=False)
        start = time.perf_counter()
        first = logic.lesion_table(node)
        print(f"first table (every lesion): {1000 * (time.perf_counter() - start):.0f} ms, {len(first)} lesions")
        rng = np.random.default_rng(1)
        times = []
        for _ in range(args.strokes):
            paint(logic, node, volume, [int(v) for v in rng.integers((10, 10, 10), np.array(SHAPE_KJI) - 10)])
            start = time.perf_counter()
            table = logic.lesion_table(node)
            times.append(time.perf_counter() - start)
        expected, full_seconds = full_table(logic, node, volume)
        keys = ("voxels", "volume_ml", "centroid_ras", "max_diameter_mm")
        assert [[lesion[k] for k in keys] for lesion in table] == [[lesion[k] for k in keys] for lesion in expected], "tables differ"
        logic.close()
    median, worst = statistics.median(times), max(times)
    print(f"stroke refresh on {SHAPE_KJI[2]}x{SHAPE_KJI[1]}x{SHAPE_KJI[0]}: median {1000 * median:.0f} ms, worst {1000 * worst:.0f} ms")
    print(f"full recomputation: {1000 * full_seconds:.0f} ms ({full_seconds / median:.1f}x the stroke refresh); target < 100 ms")
    return 0 if median < 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
