"""Voxel grids of MRML volume nodes as numpy: matrices, (k, j, i) views and SimpleITK images (no torch, no Qt)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..io.volume import image_from_ijk_array

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 numpy array as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def ijk_to_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's voxel-to-RAS matrix in its own (local) coordinates."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def to_world(node: slicer.vtkMRMLTransformableNode) -> np.ndarray:
    """The node's parent transform to world as a 4x4 matrix (identity when untransformed or non-linear)."""
    parent = node.GetParentTransformNode()
    if parent is None or not parent.IsTransformToWorldLinear():
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_numpy(matrix)


def image_array(image: vtk.vtkImageData) -> np.ndarray:
    """Voxels of a single-component vtkImageData as a (k, j, i) numpy view."""
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def volume_array(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's voxels as a (k, j, i) numpy view (raises InputError when the node holds none)."""
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{volume_node.GetName() if volume_node else 'volume'}: the volume has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{volume_node.GetName()}: a single-component (grey-level) volume is needed")
    return image_array(image)


def array_image(array_kji: np.ndarray, volume_node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """A (k, j, i) array on a volume node's grid as a SimpleITK image with that geometry (LPS)."""
    return image_from_ijk_array(np.transpose(array_kji, (2, 1, 0)), RAS_TO_LPS @ ijk_to_ras(volume_node))


def volume_image(volume_node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """A volume node as a SimpleITK image with its geometry (LPS), e.g. for the export."""
    return array_image(np.array(volume_array(volume_node)), volume_node)
