"""Shared fixtures: small real model folders, volumes on disk and the real LiTS CT crop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import data_sources  # noqa: E402  (Testing/ is on sys.path under pytest's rootdir conftest)


def run_cli(*args, check_exit: int | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real command line (``python -m SegmentLesionLib ARGS``) in a new process: the one CLI runner of the tests."""
    result = subprocess.run(
        [sys.executable, "-m", "SegmentLesionLib", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr
    return result


def tiny_network_def(spatial_dims: int = 3, out_channels: int = 2) -> dict:
    """A small MONAI UNet definition (a few thousand parameters)."""
    return {
        "_target_": "UNet",
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "out_channels": out_channels,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    }


def make_model(folder: Path, spatial_dims: int = 3, seed: int = 0, **settings) -> Path:
    """Write a model folder with random weights (a real MONAI UNet)."""
    import torch
    from SegmentLesionLib.models.network import build_network, save_model
    from SegmentLesionLib.models.spec import LabelInfo, ModelSpec

    # The network takes the model's input channels (a folder whose network disagrees is refused when loaded).
    network_def = {**tiny_network_def(spatial_dims), "in_channels": int(settings.get("in_channels", 1))}
    defaults = dict(
        name="TinyTestModel",
        version="0.0.1",
        network_def=network_def,
        labels=[LabelInfo(1, "lesion", [0.9, 0.3, 0.2])],
        spatial_dims=spatial_dims,
        patch_size=[32] * spatial_dims,
        spacing=None,
        min_lesion_mm3=0.0,
    )
    defaults.update(settings)
    spec = ModelSpec(**defaults)
    torch.manual_seed(seed)
    return save_model(folder, spec, build_network(network_def), overwrite=True)


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "unet3d")


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "unet2d", spatial_dims=2)


def make_volume(
    shape_kji=(24, 28, 32), spacing=(1.0, 1.2, 1.5), origin=(10.0, -20.0, 30.0), direction=None, seed=0, blob: bool = True
) -> sitk.Image:
    """A float32 noise volume (mean 100, sd 10) on a chosen grid, with a bright central blob unless ``blob`` is False.

    The one volume factory of the tests (``shape_kji`` in numpy order, the rest in SimpleITK's (x, y, z) order).
    """
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 10, shape_kji).astype(np.float32)
    if blob:
        k, j, i = np.indices(shape_kji)
        centre = np.array(shape_kji) / 2
        sphere = ((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) < 25
        array[sphere] += 150
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def oblique_direction(degrees: float = 20.0) -> tuple:
    """A rotation about an oblique axis, as a row-major direction matrix."""
    angle = np.radians(degrees)
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew
    return tuple(rotation.ravel())


@pytest.fixture(scope="session")
def lits_case(tmp_path_factory):
    """The real LiTS case 117 crop (CT, liver + tumour labels), fetched once (a failed fetch fails the test)."""
    return data_sources.lits_case()


def blob_case(rng: np.random.Generator, shape=(32, 32, 32), pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume with 1-3 bright spheres and their exact mask (arrays, any axis order)."""
    image = rng.normal(0.0, 0.3, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(2.5, 6.0)
        centre = [rng.uniform(radius, s - radius) for s in shape]
        sphere = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
        label[sphere] = 1
    image[label > 0] += rng.uniform(1.5, 3.0)
    if pad:
        # Resampling an oblique volume pads the model grid with the image minimum: teach the model it is background.
        low = float(image.min())
        for axis in range(3):
            width = int(rng.integers(0, 10))
            index = [slice(None)] * 3
            index[axis] = slice(0, width) if rng.random() < 0.5 else slice(shape[axis] - width, shape[axis])
            image[tuple(index)] = low
            label[tuple(index)] = 0
    return image, label


def train_blob_model(folder: Path, iterations: int = 100, seed: int = 0) -> Path:
    """Train a tiny 3D UNet to find bright blobs (a few seconds): a real model with predictable output."""
    import torch
    from monai.losses import DiceCELoss
    from SegmentLesionLib.models.network import build_network, save_model
    from SegmentLesionLib.models.spec import LabelInfo, ModelSpec

    network_def = {**tiny_network_def(), "channels": [8, 16, 32]}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(network_def)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    network.train()
    for _ in range(iterations):
        batch = [blob_case(rng, pad=True) for _ in range(4)]
        images = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None]
        labels = torch.from_numpy(np.stack([b[1] for b in batch]))[:, None]
        optimiser.zero_grad()
        loss = loss_fn(network(images), labels)
        loss.backward()
        optimiser.step()
    # Blobs are drawn at native resolution: no resampling, no intensity normalisation (data is already scaled).
    spec = ModelSpec(
        name="BlobTestModel",
        version="0.0.1",
        network_def=network_def,
        labels=[LabelInfo(1, "lesion", [0.9, 0.3, 0.2])],
        patch_size=[32, 32, 32],
        spacing=None,
        intensity={"mode": "none"},
        min_lesion_mm3=0.0,
    )
    return save_model(folder, spec, network, overwrite=True)


@pytest.fixture(scope="session")
def blob_model(tmp_path_factory) -> Path:
    return train_blob_model(tmp_path_factory.mktemp("models") / "blob")


def blob_volume(seed: int = 5, shape=(40, 36, 44)) -> tuple[sitk.Image, sitk.Image]:
    """A blob case as images (default geometry), for end-to-end checks with ``blob_model``."""
    image, label = blob_case(np.random.default_rng(seed), shape)
    return sitk.GetImageFromArray(image), sitk.GetImageFromArray(label)


# ------------------------------------------------------------------ DICOM series (pydicom) and DICOM SEG read-back
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID12345"
BIRTH_DATE = "19700101"
ACCESSION = "ACC998877"


def write_ct_series(folder: Path, size=(12, 10, 6), spacing=(0.8, 0.7, 2.0), orientation=(1, 0, 0, 0, 1, 0), seed=0) -> dict:
    """Write a small CT series (int16, one file per slice, shuffled file names) carrying a patient identity.

    Returns the identity strings written into the headers (names, IDs, dates, UIDs).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    identity = {
        "PatientName": PATIENT_NAME,
        "PatientID": PATIENT_ID,
        "PatientBirthDate": BIRTH_DATE,
        "AccessionNumber": ACCESSION,
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "ReferringPhysicianName": "Smith^John",
        "StudyID": "STUDY4242",
        "StudyDate": "20240102",
    }
    sop_uids = []
    # Files are named out of slice order: the reader must sort by position, as for real exports.
    for k in rng.permutation(size[2]):
        sop = generate_uid()
        sop_uids.append(sop)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        for key, value in identity.items():
            setattr(ds, key, value)
        ds.PatientSex = "F"
        ds.StudyTime = "101010"
        ds.Modality = "CT"
        ds.Manufacturer = "TestScanner"
        ds.SeriesNumber = 3
        ds.InstanceNumber = int(k) + 1
        position = np.array([-5.0, -4.0, 10.0]) + normal * spacing[2] * int(k)
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = size[1], size[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -100, 1
        # Values below 256 keep every other byte zero, so voxel data can never spell a name by chance.
        ds.PixelData = rng.integers(0, 200, (size[1], size[0]), dtype=np.int16).tobytes()
        ds.save_as(folder / f"IM{rng.integers(1e6):06d}_{k}.dcm", enforce_file_format=True)
    identity["SOPInstanceUIDs"] = sop_uids
    return identity


def series_label(series: Path, boxes: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    """A labelmap on the series' grid with value -> (k, j, i) boxes."""
    from SegmentLesionLib.io.volume import read_volume

    image = read_volume(series)
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    for value, box in boxes.items():
        array[box] = value
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label


def read_back(path: Path, series: Path) -> np.ndarray:
    """The SEG's segments as a label array (k, j, i) in the series' slice order, read with highdicom."""
    import highdicom as hd
    import pydicom
    from SegmentLesionLib.io.volume import dicom_series_files

    seg = hd.seg.segread(str(path))
    uids = [str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in dicom_series_files(series)]
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False, skip_overlap_checks=True)


# ------------------------------------------------------------------ datasets
BLOB_DATASET_SPACING = (1.0, 1.2, 1.5)  # (x, y, z) mm: anisotropic, so a spacing in the wrong axis order changes distances


def write_blob_dataset(folder: Path, seeds=(11, 12, 13), corrupt: tuple[str, ...] = (), empty_label: tuple[str, ...] = ()) -> Path:
    """An nnU-Net v2 raw dataset of bright-blob volumes (32^3, anisotropic spacing) with their exact masks.

    Cases named in ``corrupt`` get an image file that is not an image; those in ``empty_label`` an empty label.
    """
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for seed in seeds:
        case_id = f"blob_{seed:03d}"
        image, label = blob_case(np.random.default_rng(seed), shape=(32, 32, 32))
        if case_id in empty_label:
            label[:] = 0
        image_file = folder / "imagesTr" / f"{case_id}_0000.nii.gz"
        label_file = folder / "labelsTr" / f"{case_id}.nii.gz"
        for array, path in ((image, image_file), (label, label_file)):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(BLOB_DATASET_SPACING)
            volume.SetOrigin((-5.0, 7.0, 3.0))
            sitk.WriteImage(volume, str(path))
        if case_id in corrupt:
            image_file.write_bytes(b"this is not a NIfTI file")
        training.append({"image": f"./imagesTr/{case_id}_0000.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {
        "name": folder.name,
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(training),
        "file_ending": ".nii.gz",
        "training": training,
    }
    # Written by hand, not by the project's writer: the tests read datasets the way nnU-Net users lay them out.
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


# ------------------------------------------------------------------ multi-sequence cases (tumour-like nested spheres)
# Four sequences of one study: FLAIR shows the whole tumour (WT), T2 the tumour core (TC), T1c the enhancing tumour
# (ET), T1 nothing; each sequence has its own intensity scale. Enhancing vessels outside the tumour are bright in T1c
# only: a model must look at FLAIR too to call enhancing tumour.
SEQUENCES = ("T1c", "T1", "T2", "FLAIR")
SEQUENCE_SCALE = {"T1c": (300.0, 40.0), "T1": (500.0, 30.0), "T2": (80.0, 10.0), "FLAIR": (1200.0, 90.0)}  # mean, sd
TUMOUR_RADII = {"WT": 8.0, "TC": 5.5, "ET": 3.5}  # mm


def physical_points(image: sitk.Image) -> np.ndarray:
    """The LPS position (mm) of every voxel centre, (k, j, i, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T


def tumour_masks(points: np.ndarray, centre, vessels=()) -> dict[str, np.ndarray]:
    """WT, TC and ET masks (and a vessel mask) at physical ``points`` for a tumour at ``centre`` (LPS mm)."""
    distance = np.linalg.norm(points - np.asarray(centre, dtype=float), axis=-1)
    masks = {name: distance <= radius for name, radius in TUMOUR_RADII.items()}
    vessel = np.zeros(points.shape[:-1], bool)
    for position in vessels:
        vessel |= np.linalg.norm(points - np.asarray(position, dtype=float), axis=-1) <= 2.0
    masks["vessel"] = vessel & ~masks["WT"]
    return masks


def sequence_array(name: str, masks: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One sequence's voxels (float32) for tumour masks: noise on its own scale plus its contrast."""
    mean, sd = SEQUENCE_SCALE[name]
    array = rng.normal(mean, sd, masks["WT"].shape)
    if name == "FLAIR":
        array += 4.0 * sd * masks["WT"]
    elif name == "T2":
        array += 4.0 * sd * masks["TC"]
    elif name == "T1c":
        array += 5.0 * sd * (masks["ET"] | masks["vessel"])
    return array.astype(np.float32)


def sequence_case(grids: dict[str, sitk.Image], centre, vessels=(), seed: int = 0) -> dict[str, sitk.Image]:
    """Each sequence sampled on its own grid (an empty image giving size, spacing, origin and direction), the same
    tumour at the same physical place in all of them."""
    rng = np.random.default_rng(seed)
    images = {}
    for name, grid in grids.items():
        image = sitk.GetImageFromArray(sequence_array(name, tumour_masks(physical_points(grid), centre, vessels), rng))
        image.CopyInformation(grid)
        images[name] = image
    return images


def empty_grid(size, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """An image that only carries a grid (size in (i, j, k) order)."""
    image = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection([float(v) for v in direction])
    return image


def _training_case(rng: np.random.Generator, channels: tuple[str, ...], shape=(24, 24, 24)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from SegmentLesionLib.engine.intensity import normalize_intensity

    points = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    centre = [rng.uniform(5.0, n - 5.0) for n in shape]
    vessels = [[rng.uniform(2.0, n - 2.0) for n in shape] for _ in range(int(rng.integers(0, 3)))]
    masks = tumour_masks(points, centre, vessels)
    data = np.stack([normalize_intensity(sequence_array(name, masks, rng), {"mode": "zscore"}) for name in channels])
    return data, masks


def train_sequence_model(folder: Path, activation: str, iterations: int = 100, seed: int = 0) -> Path:
    """Train a tiny 3D UNet on tumour-like cases (a few seconds on 2 cores): a real multi-channel model.

    ``softmax``: channels T1c and FLAIR, labels edema (1: WT without ET) and enhancing (2: ET).
    ``sigmoid``: channels T1c, T1, T2, FLAIR, regions TC (1), WT (2), ET (4), BraTS' label convention [4, 1, 2].
    """
    import torch
    from monai.losses import DiceCELoss, DiceLoss
    from SegmentLesionLib.models.network import build_network, save_model
    from SegmentLesionLib.models.spec import LabelInfo, ModelSpec

    if activation == "softmax":
        channels = ("T1c", "FLAIR")
        labels = [LabelInfo(1, "Edema", [0.9, 0.8, 0.2]), LabelInfo(2, "Enhancing tumor", [0.9, 0.2, 0.2])]
        priority = None
    else:
        channels = SEQUENCES
        labels = [
            LabelInfo(1, "Tumor core", [0.2, 0.6, 0.9]),
            LabelInfo(2, "Whole tumor", [0.9, 0.8, 0.2]),
            LabelInfo(4, "Enhancing tumor", [0.9, 0.2, 0.2]),
        ]
        priority = [4, 1, 2]
    out_channels = 3
    network_def = {**tiny_network_def(out_channels=out_channels), "in_channels": len(channels), "channels": [8, 16, 32]}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(network_def)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True) if activation == "softmax" else DiceLoss(sigmoid=True, batch=True)
    bce = torch.nn.BCEWithLogitsLoss()
    network.train()
    for _ in range(iterations):
        batch = [_training_case(rng, channels) for _ in range(3)]
        images = torch.from_numpy(np.stack([b[0] for b in batch]))
        if activation == "softmax":
            target = np.stack([np.where(m["ET"], 2, np.where(m["WT"], 1, 0)) for _, m in batch])[:, None]
            loss = loss_fn(network(images), torch.from_numpy(target))
        else:
            target = torch.from_numpy(np.stack([np.stack([m["TC"], m["WT"], m["ET"]]) for _, m in batch]).astype(np.float32))
            logits = network(images)
            loss = loss_fn(logits, target) + bce(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    spec = ModelSpec(
        name=f"TumourTest{activation.title()}",
        version="0.0.1",
        network_def=network_def,
        labels=labels,
        in_channels=len(channels),
        out_channels=out_channels,
        activation=activation,
        channel_names=list(channels),
        overlap_priority=priority,
        patch_size=[32, 32, 32],
        spacing=None,
        intensity={"mode": "zscore"},
        min_lesion_mm3=0.0,
    )
    return save_model(folder, spec, network, overwrite=True)


@pytest.fixture(scope="session")
def softmax_sequence_model(tmp_path_factory) -> Path:
    return train_sequence_model(tmp_path_factory.mktemp("models") / "tumour_softmax", "softmax")


@pytest.fixture(scope="session")
def region_sequence_model(tmp_path_factory) -> Path:
    return train_sequence_model(tmp_path_factory.mktemp("models") / "tumour_regions", "sigmoid")


# ------------------------------------------------------------------ cohorts
def write_cohort_cases(folder: Path, count: int, shape=(24, 28, 32), first_seed: int = 100) -> list[Path]:
    """``count`` blob volumes ``case_000.nii.gz``... in ``folder`` (a folder manifest for ``segment-lesion cohort``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image, _ = blob_volume(first_seed + index, shape)
        image.SetSpacing((1.0, 1.2, 1.5))
        path = folder / f"case_{index:03d}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths


def verify_with_nnunet(dataset: Path, capfd) -> None:
    """nnU-Net v2's own checker; it raises on errors and only prints warnings (geometry), so both are checked."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    capfd.readouterr()
    verify_dataset_integrity(str(dataset), num_processes=1)
    printed = capfd.readouterr()
    text = printed.out + printed.err
    assert "verify_dataset_integrity Done" in text
    assert "Warning" not in text and "Error" not in text, text


def wait_for(condition, what: str, timeout: float = 120.0):
    """Wait until ``condition()`` holds (polling); the deadline only guards against a hang."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)
    return value


# ------------------------------------------------------------------ click refinement
REFINE_MODEL_DIR = Path(__file__).resolve().parent.parent / "SegmentLesion" / "Resources" / "Models" / "SegmentLesionRefine"


def make_refine_model(folder: Path, seed: int = 0, image_channels: int = 1, **settings) -> Path:
    """A click-refinement model folder with random weights (a real MONAI UNet): for wiring, not for accuracy."""
    import torch
    from SegmentLesionLib.models.network import build_network, save_model
    from SegmentLesionLib.models.spec import CLICK_REFINEMENT, LabelInfo, ModelSpec

    network_def = {**tiny_network_def(), "in_channels": image_channels + 3}
    defaults = dict(
        name="TinyRefineModel",
        version="0.0.1",
        network_def=network_def,
        labels=[LabelInfo(1, "lesion", [0.9, 0.3, 0.2])],
        in_channels=image_channels + 3,
        spacing=[1.25, 1.25, 1.25],
        patch_size=[32, 32, 32],
        intensity={"mode": "zscore", "foreground": "head"},
        min_lesion_mm3=0.0,
        interaction={"kind": CLICK_REFINEMENT, "image_channels": image_channels, "click_radius_mm": 3.0},
    )
    defaults.update(settings)
    torch.manual_seed(seed)
    return save_model(folder, ModelSpec(**defaults), build_network(network_def), overwrite=True)


@pytest.fixture(scope="session")
def refine_model(tmp_path_factory) -> Path:
    return make_refine_model(tmp_path_factory.mktemp("models") / "refine")


def spheres_case(
    centres_kji=((20, 24, 18), (20, 24, 44)),
    radius_mm=5.0,
    shape_kji=(40, 48, 64),
    spacing=(1.0, 1.0, 1.2),
    origin=(12.0, -30.0, 5.0),
    direction=None,
    contrast=120.0,
    seed=0,
) -> tuple[sitk.Image, np.ndarray]:
    """A noisy volume with bright spheres on a chosen grid, and one mask (k, j, i) per sphere (bool arrays)."""
    image = make_volume(shape_kji, spacing, origin, direction, seed, blob=False)
    array = sitk.GetArrayFromImage(image)
    grids = np.indices(shape_kji).astype(float)
    step = np.asarray(spacing, dtype=float)[::-1]
    spheres = []
    for centre in centres_kji:
        distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, step))
        spheres.append(distance <= radius_mm**2)
        array[spheres[-1]] += contrast
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result, np.stack(spheres)


def mask_image(array_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 labelmap on ``reference``'s grid."""
    image = sitk.GetImageFromArray(np.asarray(array_kji, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


def ras_of(image: sitk.Image, index_kji) -> list[float]:
    """The RAS point (mm) of a voxel index (k, j, i)."""
    from SegmentLesionLib.io.volume import ijk_to_ras_matrix

    return [float(v) for v in (ijk_to_ras_matrix(image) @ [index_kji[2], index_kji[1], index_kji[0], 1.0])[:3]]
