"""Segment terminology: Slicer's terminology entry strings, and the context file that lists "Lesion".

SNOMED CT 52988006 "Lesion" is in none of the terminology dictionaries Slicer ships (5.8 to main), so its
terminology selector could not find the segments' type. The module ships a terminology context file in
Slicer's JSON format (``Resources/Terminologies``), loaded with ``vtkSlicerTerminologiesModuleLogic.
LoadTerminologyFromFile``; a label whose codes that file lists names it as its context, any other label
names Slicer's General Anatomy list (which has, e.g., Edema).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import slicer
import vtk

GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
TERMINOLOGY_FILE = (
    Path(__file__).resolve().parents[2] / "Resources" / "Terminologies" / "SegmentationCategoryTypeModifier-SegmentLesion.json"
)


@functools.cache
def _shipped_context() -> tuple[str, frozenset]:
    """The shipped file's context name and its (category code, type code) pairs."""
    data = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    pairs = set()
    for category in data["SegmentationCodes"]["Category"]:
        for kind in category.get("Type", []):
            pairs.add(((category["CodingSchemeDesignator"], category["CodeValue"]), (kind["CodingSchemeDesignator"], kind["CodeValue"])))
    return str(data["SegmentationCategoryTypeContextName"]), frozenset(pairs)


def shipped_context_name() -> str:
    """The context name of the shipped terminology file (what ``LoadTerminologyFromFile`` returns)."""
    return _shipped_context()[0]


def context_for(terminology: dict[str, Any]) -> str:
    """The terminology context that lists a label's category and type (its own ``contextName`` when given)."""
    if terminology.get("contextName"):
        return str(terminology["contextName"])
    name, pairs = _shipped_context()
    category, kind = terminology.get("category") or ["", "", ""], terminology.get("type") or ["", "", ""]
    return name if ((str(category[0]), str(category[1])), (str(kind[0]), str(kind[1]))) in pairs else GENERAL_ANATOMY_CONTEXT


def terminology_string(terminology: dict[str, Any]) -> str:
    """A model label's terminology codes as Slicer's terminology entry string.

    Format: ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``,
    each code as ``scheme^value^meaning`` (the format ``.seg.nrrd`` files and ``slicerio`` use).
    """

    def code(key: str) -> str:
        return "^".join(str(part) for part in (terminology.get(key) or ["", "", ""]))

    return "~".join(
        [
            context_for(terminology),
            code("category"),
            code("type"),
            code("typeModifier"),
            str(terminology.get("anatomicContextName", "")),
            code("anatomicRegion"),
            code("anatomicRegionModifier"),
        ]
    )


def segment_terminology(segment: slicer.vtkSegment) -> str:
    """A segment's terminology entry string ("" when it has none).

    Read from the segment's tag: ``vtkSegment.GetTerminology()`` only exists after Slicer 5.8.
    """
    value = vtk.reference("")
    return str(value) if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) else ""


def load_terminology(terminologies_logic: Any) -> str:
    """Load the shipped context into Slicer's terminologies logic (once); returns its context name."""
    name = shipped_context_name()
    names = vtk.vtkStringArray()
    terminologies_logic.GetLoadedTerminologyNames(names)
    if name not in {names.GetValue(index) for index in range(names.GetNumberOfValues())}:
        loaded = terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
        if loaded != name:
            raise RuntimeError(f"{TERMINOLOGY_FILE}: Slicer could not load the lesion terminology")
    return name
