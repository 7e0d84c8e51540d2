"""Which Python packages the module needs in Slicer's Python, and what installing them must never replace.

torch comes from Slicer's PyTorch extension (``PyTorchUtils``: the right CUDA or CPU build); numpy, VTK and
SimpleITK are Slicer's own. The rest is installed with pip, only after the user agrees, with constraints
that pin what is already there, so pip fails rather than replacing Slicer's packages.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Iterable

# Needed by the worker (inference) and the panel (lesion table, export) on top of Slicer's own packages.
REQUIREMENTS = ("monai>=1.3", "scipy", "nibabel", "pynrrd", "slicerio>=1.0")
MINIMUM_TORCH = "2.2"
# Never replaced by an install: Slicer's own packages and the PyTorch extension's torch.
KEEP = ("torch", "numpy", "SimpleITK", "vtk")


def _name_and_minimum(requirement: str) -> tuple[str, str | None]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*$", requirement)
    if match is None:
        raise ValueError(f"unsupported requirement {requirement!r} (use 'name' or 'name>=version')")
    return match.group(1), match.group(2)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Iterable[str] = REQUIREMENTS) -> list[str]:
    """The requirements (``name`` or ``name>=version``) that are not installed or too old."""
    missing = []
    for requirement in requirements:
        name, minimum = _name_and_minimum(requirement)
        version = installed_version(name)
        if version is None or (minimum is not None and _version_tuple(version) < _version_tuple(minimum)):
            missing.append(requirement)
    return missing


def torch_ready(minimum: str = MINIMUM_TORCH) -> bool:
    """True when torch >= ``minimum`` is installed, read from package metadata: torch itself is not imported.

    Importing torch (what the PyTorch extension's ``torchInstalled()`` does) would load it into Slicer's own
    process, where the module never runs it: inference and training run in separate processes.
    """
    version = installed_version("torch")
    return version is not None and _version_tuple(version) >= _version_tuple(minimum)


def constraints(keep: Iterable[str] = KEEP) -> str:
    """A pip constraints file's text pinning the installed versions of ``keep`` (those not installed are left out)."""
    lines = []
    for name in keep:
        version = installed_version(name)
        if version is not None:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"
