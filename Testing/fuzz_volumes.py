"""Hostile volumes for property-based fuzzing (issue 16): Hypothesis strategies, the file writer and the check.

A case is one volume file at the extremes of size, spacing, direction (left-handed included), origin, voxel type,
values and file format. ``check_case`` runs the real ``segment`` command on it and lists every property it breaks:
the command ends within a hang guard, either with exit 0 and outputs on the input's grid, or with exit 1 and
exactly one ``error:`` line whose reason the case explains (an axis of one voxel, a model grid beyond the limit,
no usable voxel); never a traceback, a raw library line (ITK, VTK, numpy, a Python warning) or a half-written file.

Shared by ``test_fuzz_input.py`` (a fixed seed, a small budget) and ``benchmarks/fuzz_hostile_input.py`` (long runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk
from hypothesis import assume
from hypothesis import strategies as st
from SegmentLesionLib.io.volume import INTENSITY_LIMIT

FILE_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha", "nibabel.nii.gz")  # the last: a NIfTI written by nibabel, not ITK
OUTPUT_FORMATS = (".seg.nrrd", ".nii.gz", ".nrrd")
# "bool" is a 0/1 mask: no volume format stores a 1-bit type, so it is written as uint8.
DTYPES = ("bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64")
INTEGER_VALUES = ("noise", "blob", "constant", "zeros", "extremes")
FLOAT_VALUES = INTEGER_VALUES + ("nan", "inf", "nan-all", "inf-all", "nodata", "subnormal", "huge")
MAX_AXIS = 300  # voxels along one axis
MAX_FILE_VOXELS = 100_000  # per file: "a few hundred per axis" on one axis, small volumes overall
MODEL_SPACING_MM = 1.5  # the resampling model's grid (the other model works on the input's own spacing)
MAX_MODEL_VOXELS = 64**3  # --max-voxels of every run: cases stay fast, and the resource guard is reached often
GUARD_BAND = 0.02  # model grids within 2 % of the limit may go either way (header round-off)
HANG_GUARD_S = 120.0  # a hang runs for hours; a loaded 2-core machine needs seconds for these volumes
REFUSALS = {  # the reasons a case may be refused for, by a phrase of their error line
    "shape": ("not a 3D volume", "is a 2D image"),
    "grid": ("the model grid would hold", "the volume holds"),
    "values": ("no voxel holds a usable intensity",),
}
# What our own log lines look like (cli/main.py's format); ITK's start "WARNING: In /path/itk...", numpy's "...: RuntimeWarning".
OWN_LOG_PREFIXES = ("WARNING: ", "INFO: ")


@dataclass(frozen=True)
class VolumeCase:
    """One hostile volume file and the run it gets."""

    size: tuple[int, int, int]  # voxels (x, y, z)
    spacing: tuple[float, float, float]  # mm
    origin: tuple[float, float, float]  # mm, LPS
    direction: tuple[float, ...]  # row-major 3x3, one column per voxel axis (left-handed allowed)
    dtype: str
    values: str
    constant: float  # the value of a "constant" volume
    file_format: str
    output_format: str
    native: bool  # the model works on the input's own spacing (else on a 1.5 mm grid)
    seed: int  # of the noise

    @property
    def file_name(self) -> str:
        return "case" + (".nii.gz" if self.file_format.startswith("nibabel") else self.file_format)

    def array(self) -> np.ndarray:
        """The voxels in numpy order (z, y, x), in the type written to the file."""
        rng = np.random.default_rng(self.seed)
        shape = self.size[::-1]
        stored = np.dtype(np.uint8 if self.dtype == "bool" else self.dtype)
        floating = np.issubdtype(stored, np.floating)
        info = np.finfo(stored) if floating else np.iinfo(stored)
        values = rng.normal(100.0, 30.0, shape)
        if self.values == "blob":
            grid = np.indices(shape)
            centre = [s / 2.0 for s in shape]
            values[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= (min(shape) / 3.0) ** 2] += 200.0
        elif self.values == "zeros":
            values = np.zeros(shape)
        elif self.values == "constant":
            values = np.full(shape, self.constant)
        elif self.values == "extremes":
            values = rng.choice([float(info.min), float(info.max), 0.0], shape)
        elif self.values in ("nan", "inf"):
            bad = rng.random(shape) < 0.1
            values[bad] = np.nan if self.values == "nan" else rng.choice([np.inf, -np.inf], int(bad.sum()))
        elif self.values in ("nan-all", "inf-all"):
            values = np.full(shape, np.nan if self.values == "nan-all" else -np.inf)
        elif self.values == "nodata":  # a scanner's "no data" border at the type's lowest value (-3.4e38 in float32)
            border = np.ones(shape, bool)
            border[tuple(slice(s // 4, s - s // 4) if s > 2 else slice(None) for s in shape)] = False
            values[border] = float(info.min)
        elif self.values == "subnormal":
            values = rng.normal(0.0, 1.0, shape) * float(info.smallest_subnormal) * 100
        elif self.values == "huge":  # below the intensity limit, far beyond what float32 squares hold
            values = rng.normal(0.0, INTENSITY_LIMIT / 10, shape)
        if self.dtype == "bool":
            return (values > 100.0).astype(np.uint8)
        if not floating:
            values = np.clip(np.nan_to_num(np.round(values)), float(info.min), float(info.max))
        with np.errstate(over="ignore", invalid="ignore"):  # float64 -> float32 overflow, uint64 max rounding
            return values.astype(stored)

    def write(self, folder: Path) -> Path:
        """Write the case's file into ``folder``; returns its path (what ITK prints while writing it is dropped)."""
        with _terminal():  # VNL's SVD prints about subnormal direction entries: the harness's, not the product's
            return self._write(folder)

    def _write(self, folder: Path) -> Path:
        path = folder / self.file_name
        array = self.array()
        direction = np.asarray(self.direction, float).reshape(3, 3)
        if self.file_format.startswith("nibabel"):
            import nibabel

            affine = np.eye(4)
            affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction * np.asarray(self.spacing)  # LPS -> RAS
            affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(self.origin)
            image = nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine, dtype=array.dtype)
            with warnings.catch_warnings():  # nibabel's own advice about int64 is not the property under test
                warnings.simplefilter("ignore")
                nibabel.save(image, str(path))
            return path
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        sitk.WriteImage(image, str(path))
        return path


# ------------------------------------------------------------------ strategies
def _log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(np.log10(low), np.log10(high)).map(lambda exponent: float(10.0**exponent))


SPACING_VALUES = st.one_of(st.sampled_from([1e-4, 0.5, 1.0, MODEL_SPACING_MM, 100.0]), _log_uniform(1e-4, 100.0))


ONE_IN_TEN = st.sampled_from([True] + [False] * 9)


@st.composite
def sizes(draw) -> tuple[int, int, int]:
    """1 to ``MAX_AXIS`` voxels per axis, at most ``MAX_FILE_VOXELS`` in all (the axes in a random order).

    An axis of one voxel (a slice, a line, a point) comes one time in ten: it is always refused, and cheaply.
    """
    axes = []
    for _ in range(3):
        room = max(2, min(MAX_AXIS, MAX_FILE_VOXELS // max(1, int(np.prod(axes)))))
        axes.append(1 if draw(ONE_IN_TEN) else draw(st.integers(2, room)))
    order = draw(st.permutations(range(3)))
    return tuple(axes[i] for i in order)


@st.composite
def spacings(draw) -> tuple[float, float, float]:
    """1e-4 to 100 mm, isotropic or not."""
    if draw(st.booleans()):
        value = draw(SPACING_VALUES)
        return (value, value, value)
    return tuple(draw(SPACING_VALUES) for _ in range(3))


def rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation about ``axis`` by ``angle`` radians."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


@st.composite
def directions(draw) -> tuple[float, ...]:
    """Axis permutations with flips, any rotation, and near-axis rotations (round-off entries such as 1e-17).

    Each may be left-handed (one axis flipped).
    """
    kind = draw(st.sampled_from(["axes", "rotation", "near-axes"]))
    permutation = draw(st.permutations(range(3)))
    matrix = np.zeros((3, 3))
    matrix[list(permutation), [0, 1, 2]] = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    if kind != "axes":
        axis = np.array([draw(st.floats(-1.0, 1.0)) for _ in range(3)])
        assume(np.linalg.norm(axis) > 0.1)
        angle = draw(st.floats(0.0, 2 * np.pi)) if kind == "rotation" else draw(_log_uniform(1e-17, 1e-2))
        matrix = rotation_matrix(axis, angle) @ matrix
    return tuple(float(v) for v in matrix.ravel())


@st.composite
def volume_cases(draw) -> VolumeCase:
    """Any ``VolumeCase``."""
    dtype = draw(st.sampled_from(DTYPES))
    floating = dtype.startswith("float")
    values = draw(st.sampled_from(FLOAT_VALUES if floating else INTEGER_VALUES))
    stored = np.dtype(np.uint8 if dtype == "bool" else dtype)
    if floating:
        constant = draw(st.floats(allow_nan=False, allow_infinity=False, width=32 if dtype == "float32" else 64))
    else:
        info = np.iinfo(stored)
        constant = float(draw(st.integers(int(info.min), int(info.max))))
    return VolumeCase(
        size=draw(sizes()),
        spacing=draw(spacings()),
        origin=tuple(draw(st.floats(-1e5, 1e5)) for _ in range(3)),
        direction=draw(directions()),
        dtype=dtype,
        values=values,
        constant=constant,
        file_format=draw(st.sampled_from(FILE_FORMATS)),
        output_format=draw(st.sampled_from(OUTPUT_FORMATS)),
        native=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def measured_cases() -> list[VolumeCase]:
    """Issue 16's measured cases, run first by the suite: 50 mm voxels, -3e38 everywhere, NaN everywhere, 1x1x1."""
    base = VolumeCase((20, 30, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), "float32", "constant",
                      100.0, ".nii.gz", ".seg.nrrd", False, 0)  # fmt: skip
    return [
        replace(base, spacing=(50.0, 50.0, 50.0)),
        replace(base, constant=-3e38),
        replace(base, values="nan-all"),
        replace(base, size=(1, 1, 1)),
    ]


def found_cases() -> list[VolumeCase]:
    """What earlier long runs found (fixed since), replayed first by the suite."""
    # fmt: off
    return [
        # A valid sform-only NIfTI (nibabel) with round-off entries far from the origin: ITK refused it.
        VolumeCase((3, 153, 127), (1.5, 0.007732936498905671, 0.5), (99999.99999999999, -99999.0, 100000.0),
                   (-1.767859217843229e-272, 1.0, 7.555063015875596e-15,
                    -6.155355845711239e-15, -7.555063015875596e-15, 1.0,
                    1.0, 1.767859217843229e-272, 6.155355845711239e-15),
                   "uint8", "constant", 132.0, "nibabel.nii.gz", ".nrrd", False, 234),
        # Subnormal direction entries: VNL's SVD printed to the terminal while the volume was read and written.
        VolumeCase((2, 255, 155), (1.0, 1.0, 0.0009301585957728014), (1.1471184749625497e-05, 32920.34581816135, 6608.2),
                   (-5.196445654243104e-24, -1.616e-321, 1.0,
                    -2.5433593084147422e-14, 1.0, 1.616e-321,
                    1.0, 2.5433593084147422e-14, 5.196445654243104e-24),
                   "bool", "blob", 82.0, ".nrrd", ".nii.gz", True, 153),
        # A 0.1 degree rotation of very fine voxels taken for axis-aligned: a model grid 6 times too small.
        VolumeCase((129, 24, 31), (1.5, 0.0021247437489588807, 0.0021247437489588807), (58975.2, -89317.0, 96.2),
                   (0.9999986050362362, -1.096759762844987e-06, -0.0016703066720991637,
                    0.0016703066720991637, 0.0013132421049473393, 0.9999977427328498,
                    1.096759762844987e-06, -0.9999991376966136, 0.0013132421049473393),
                   "uint16", "noise", 227.0, ".nii", ".nii.gz", True, 6000),
    ]
    # fmt: on


def tiny_models(folder: Path) -> dict[bool, Path]:
    """Two tiny real UNets saved with the project's ``save_model`` (each example runs in a fraction of a second):
    ``False`` works at 1.5 mm, ``True`` on the input's own spacing."""
    from conftest import make_model

    common = dict(patch_size=[16, 16, 16], intensity={"mode": "zscore", "foreground": "head"}, threshold=0.5)
    return {
        False: make_model(folder / "resampled", spacing=[MODEL_SPACING_MM] * 3, **common),
        True: make_model(folder / "native", spacing=None, **common),
    }


# ------------------------------------------------------------------ running the command
@dataclass(frozen=True)
class CommandResult:
    code: int | None  # None: still running at the hang guard
    stdout: str
    stderr: str


Runner = Callable[[list[str], float], CommandResult]


class _Hang(BaseException):
    """Raised by the hang guard's alarm (a BaseException, so no ``except Exception`` of the code under test stops it)."""


@contextlib.contextmanager
def _terminal() -> Iterator[dict[str, str]]:
    """What a terminal would show during the block: file descriptors 1 and 2 (C libraries) and sys.stdout/stderr."""
    shown: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)
        try:
            yield shown
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.close()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            for name, file in (("stdout", out), ("stderr", err)):
                file.seek(0)
                shown[name] = file.read().decode("utf-8", "replace")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_in_process(argv: list[str], limit_s: float = HANG_GUARD_S) -> CommandResult:
    """``segment-lesion ARGV`` in this process, as a terminal would see it (the command's own logging set-up and the
    interpreter's default warning filters), stopped by an alarm after ``limit_s`` (the main thread only)."""
    from SegmentLesionLib.cli.main import main

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()  # main()'s basicConfig then writes our log lines to this run's stderr, as in a new process

    def alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    code: int | None = 1
    with _terminal() as shown:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)  # what python ignores unless told otherwise
            warnings.showwarning = _print_warning
            signal.setitimer(signal.ITIMER_REAL, limit_s)
            try:
                code = main(argv)
            except _Hang:
                code = None
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # what the interpreter would print before exiting 1
                traceback.print_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                for handler in root.handlers[:]:
                    root.removeHandler(handler)
                root.handlers[:] = saved_handlers
                root.setLevel(saved_level)
    return CommandResult(code, shown["stdout"], shown["stderr"])


# ------------------------------------------------------------------ the properties
@dataclass
class Outcome:
    """How one case ended: ``kind`` is "segmented", a refusal's reason, "error" (any other) or "hang"."""

    case: VolumeCase
    kind: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stderr: str = ""


def usable_voxels(array: np.ndarray) -> bool:
    """Whether any voxel holds an intensity by the design's rule (finite, below the intensity limit)."""
    with np.errstate(invalid="ignore", over="ignore"):
        values = array.astype(np.float64)
        return bool((np.isfinite(values) & (np.abs(values) < INTENSITY_LIMIT)).any())


def expected_model_voxels(case: VolumeCase) -> float:
    """The model grid's voxels, worked out here: the input's box along the model's (RAS) axes, at 1.5 mm or, for the
    native model, at the spacing of the input axis closest to each."""
    direction = np.abs(np.asarray(case.direction, float).reshape(3, 3))
    edges = np.asarray(case.size, float) * np.asarray(case.spacing, float)
    extent = direction @ edges  # the box's length along each LPS (= RAS up to sign) axis
    if case.native:
        spacing = np.asarray(case.spacing, float)[direction.argmax(axis=1)]
    else:
        spacing = np.full(3, MODEL_SPACING_MM)
    return float(np.prod(np.maximum(np.round(extent / spacing), 1.0)))


def allowed_outcomes(case: VolumeCase, written: np.ndarray, limit: int = MAX_MODEL_VOXELS) -> set[str]:
    """The outcomes the case explains, in the engine's order of checks: shape (header), model grid (header), values."""
    if min(case.size) == 1:
        return {"shape"}
    voxels = expected_model_voxels(case)
    if voxels > limit * (1 + GUARD_BAND):
        return {"grid"}
    allowed = {"grid"} if voxels > limit * (1 - GUARD_BAND) else set()
    allowed.add("segmented" if usable_voxels(written) else "values")
    return allowed


def _refusal(line: str) -> str:
    return next((kind for kind, phrases in REFUSALS.items() if any(phrase in line for phrase in phrases)), "error")


def corners_mm(size, spacing, origin, direction) -> np.ndarray:
    """The physical positions (mm) of a grid's eight corner voxels."""
    index = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)], float)
    matrix = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)
    return np.asarray(origin, float) + index @ matrix.T


def grid_problems(output: Path, case: VolumeCase) -> list[str]:
    """How the output's grid differs from the case's, beyond what their file formats store.

    NIfTI keeps spacing, origin and the voxel axes (sform, quaternion) in float32, and ITK takes the axes apart in
    float32 too: a voxel's position is kept to a few ulps of the grid's largest coordinate, but the direction of
    an axis much shorter than the others is not (1e-4 mm voxels beside 100 mm ones). So for NIfTI the corner
    voxels' positions are compared, relative to the grid's largest coordinate; NRRD and MetaImage keep doubles.
    """
    image = sitk.ReadImage(str(output))
    if image.GetSize() != case.size:
        return [f"output size {image.GetSize()} != input size {case.size}"]
    nifti = ".nii" in case.file_format or ".nii" in case.output_format
    rtol = 4e-6 if nifti else 1e-9
    want = corners_mm(case.size, case.spacing, case.origin, case.direction)
    got = corners_mm(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    scale = float(np.max(np.abs(want))) + float(np.max(np.ptp(want, axis=0))) + 1e-3
    problems = []
    if not np.allclose(image.GetSpacing(), case.spacing, rtol=rtol, atol=0.0):
        problems.append(f"output spacing {image.GetSpacing()} != input spacing {case.spacing}")
    if np.max(np.abs(got - want)) > rtol * scale:
        problems.append(f"output corners off by {np.max(np.abs(got - want)):.3g} mm (tolerance {rtol * scale:.3g} mm)")
    if not nifti and not np.allclose(image.GetDirection(), case.direction, rtol=0.0, atol=1e-9):
        problems.append(f"output direction {image.GetDirection()} != input direction {case.direction}")
    return problems


def stderr_problems(stderr: str, input_path: Path, code: int | None) -> list[str]:
    """Lines no user should see: more or fewer than one error line, tracebacks, anything not our own."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    problems = []
    if code == 1 and len(errors) != 1:
        problems.append(f"exit 1 with {len(errors)} error lines")
    if code == 0 and errors:
        problems.append("exit 0 with an error line")
    raw = [line for line in lines if not (line.startswith("error: ") or (line.startswith(OWN_LOG_PREFIXES) and str(input_path) in line))]
    if raw:
        problems.append(f"raw output on stderr ({len(raw)} lines): {raw[0][:200]!r}")
    return problems


def check_case(case: VolumeCase, folder: Path, models: dict[bool, Path], runner: Runner = run_in_process) -> Outcome:
    """Write ``case`` into ``folder``, segment it with ``runner`` and list the properties it breaks."""
    folder.mkdir(parents=True, exist_ok=True)
    path = case.write(folder)
    out_folder = folder / "out"
    output = out_folder / f"case{case.output_format}"
    argv = ["segment", str(path), "-o", str(output), "--model", str(models[case.native])]
    argv += ["--device", "cpu", "--max-voxels", str(MAX_MODEL_VOXELS)]
    start = time.perf_counter()
    result = runner(argv, HANG_GUARD_S)
    seconds = time.perf_counter() - start
    if result.code is None:
        return Outcome(case, "hang", [f"still running after {HANG_GUARD_S:.0f} s"], seconds, result.stderr)
    problems = stderr_problems(result.stderr, path, result.code)
    error = next((line for line in result.stderr.splitlines() if line.startswith("error: ")), "")
    kind = "segmented" if result.code == 0 else _refusal(error)
    allowed = allowed_outcomes(case, case.array())
    if result.code not in (0, 1):
        problems.append(f"exit code {result.code}")
    if kind not in allowed:
        problems.append(f"ended as {kind!r} ({error or 'exit 0'}), expected {sorted(allowed)}")
    left = sorted(p.name for p in out_folder.iterdir()) if out_folder.exists() else []
    report = out_folder / "case.lesions.json"
    if result.code == 0:
        if left != sorted([output.name, report.name]):
            problems.append(f"output folder holds {left}, not the labelmap and its report")
        else:
            problems += grid_problems(output, case)
            size = json.loads(report.read_text())["input"]["size"]
            if list(size) != list(case.size):
                problems.append(f"report input size {size} != {list(case.size)}")
    elif left:
        problems.append(f"failed run left {left} in the output folder")
    return Outcome(case, kind, problems, seconds, result.stderr)
