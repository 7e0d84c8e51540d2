"""Export a corrected segmentation as a training case: nnU-Net v2 raw layout, also a MONAI datalist.

One case is the image, the radiologist's corrected label, the model's label before correction (when known)
and a provenance record (paths: :mod:`.layout`; record: :mod:`.provenance`). An export runs in two steps:

- :func:`prepare_export` reads and checks every input, maps segments onto the model's labels
  (:mod:`.labels`), compares the AI label with the corrected one (:mod:`.comparison`) and builds the
  provenance. It writes nothing, so a refused export changes nothing.
- :func:`commit_export` takes the dataset's lock, repairs what an interrupted export left, and writes the case
  through the journal (:mod:`.journal`), with the other formats (``--also``) beside the dataset.

No patient identity: case IDs are opaque (given, checked against the DICOM header's names, IDs, dates and
UIDs, or generated: :mod:`.case_ids`); images are written without metadata; provenance holds no file path and
no DICOM text.

numpy / SimpleITK / scipy only: no torch, no Qt, no MRML. The Slicer panel calls :func:`export_case`,
:func:`generate_case_id` and :func:`dataset_summary` (imported here from :mod:`.case_ids` and :mod:`.summary`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.files import utc_timestamp
from ..io.volume import check_3d_scalar, read_volume, strip_metadata
from ..io.writers import write_seg_nrrd
from ..models.spec import LESION_TERMINOLOGY, LabelInfo, ModelSpec, default_model_dir, load_spec
from . import journal, layout
from .case_ids import case_ids_on_disk, dicom_identity, dicom_modality, generate_case_id, validate_case_id
from .clicks import click_records, summarise_clicks
from .comparison import compare_labels, label_statistics
from .journal import DatasetMeta
from .labels import OVERLAP_RULES, LabelSource, NnunetLabels, format_name, label_on_image_grid, nnunet_labels, read_label
from .provenance import InferenceRecord, LabelRecord, ModelIdentity, Provenance, SourceRecord, software_versions
from .summary import dataset_summary, plural

__all__ = ["FORMATS", "PreparedExport", "commit_export", "dataset_summary", "export_case", "generate_case_id", "prepare_export"]

FORMATS = ("seg.nrrd", "nifti", "dicom-seg")
_FORMAT_ALIASES = {
    "seg.nrrd": "seg.nrrd",
    ".seg.nrrd": "seg.nrrd",
    "slicer": "seg.nrrd",
    "nifti": "nifti",
    "nii.gz": "nifti",
    ".nii.gz": "nifti",
    "dicom-seg": "dicom-seg",
    "dicomseg": "dicom-seg",
    "dicom": "dicom-seg",
}
_EXTRA_SUFFIX = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".dcm"}


def parse_formats(formats: str | Iterable[str] | None) -> list[str]:
    """Normalise ``--also`` values (``seg.nrrd,nifti,dicom-seg``) to the names in ``FORMATS``.

    Raises:
        InputError: an unknown format.
    """
    if not formats:
        return []
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    result: list[str] = []
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        if key not in _FORMAT_ALIASES:
            raise InputError(f"export format {item!r}: use one of {', '.join(FORMATS)}")
        if _FORMAT_ALIASES[key] not in result:
            result.append(_FORMAT_ALIASES[key])
    return result


def _compact(image: sitk.Image) -> sitk.Image:
    """The smallest lossless pixel type: integer data (CT in HU, most MR) as int16/uint16, else float32."""
    array = sitk.GetArrayViewFromImage(image)
    if array.size and np.array_equal(array, np.round(array)):
        low, high = float(array.min()), float(array.max())
        for pixel, (lo, hi) in ((sitk.sitkInt16, (-32768, 32767)), (sitk.sitkUInt16, (0, 65535))):
            if lo <= low and high <= hi:
                return strip_metadata(sitk.Cast(image, pixel))
    return strip_metadata(sitk.Cast(image, sitk.sitkFloat32))


def read_image(image: str | os.PathLike | sitk.Image) -> tuple[sitk.Image, SourceRecord, Optional[Path]]:
    """The image (metadata-free, compact pixel type), its provenance record (no PHI), and its DICOM folder if it is one."""
    if isinstance(image, sitk.Image):
        volume = strip_metadata(sitk.Image(image))
        check_3d_scalar(volume, "image")
        fmt, folder = "volume", None
    else:
        path = Path(image)
        volume = read_volume(path)
        fmt = format_name(path)
        folder = path if path.is_dir() else None
    volume = _compact(volume)
    return volume, SourceRecord.of(volume, fmt), folder


def resolve_model(model: ModelSpec | str | os.PathLike | None) -> ModelSpec | None:
    """The model whose labels the export uses: a spec, a folder, or (None) the default model folder if installed."""
    if isinstance(model, ModelSpec):
        return model
    if model is not None:
        return load_spec(model)
    default = default_model_dir()
    return load_spec(default) if default.is_dir() else None


def _dataset_labels(spec: ModelSpec | None, existing: Mapping[str, Any] | None) -> list[LabelInfo]:
    """The labels of the export: the model's; without a model, the dataset's; else one generic 'lesion'."""
    if spec is not None:
        return list(spec.labels)
    names = existing.get("labels") if existing else None
    if isinstance(names, Mapping):
        labels = [LabelInfo(value, str(name), [0.9, 0.3, 0.2]) for name, value in names.items() if isinstance(value, int) and value > 0]
        if labels:
            return labels
    return [LabelInfo(1, "lesion", [0.94, 0.35, 0.20], {k: list(v) for k, v in LESION_TERMINOLOGY.items()})]


def _check_compatible(dataset: Path, existing: Mapping[str, Any] | None, meta: DatasetMeta) -> None:
    if not existing:
        return
    if "labels" in existing and existing["labels"] != meta.labels:
        raise InputError(
            f"{dataset}: the dataset's labels {existing['labels']} differ from the model's {meta.labels}; "
            "export into another dataset folder (a dataset holds one label set)"
        )
    listed = existing.get("channel_names")
    if isinstance(listed, Mapping) and (len(listed) > 1 or meta.channels > 1) and dict(listed) != meta.channel_names:
        raise InputError(
            f"{dataset}: the dataset's image channels {dict(listed)} differ from this case's {meta.channel_names}; "
            "export into another dataset folder (a dataset holds one set of channels)"
        )
    if existing.get("file_ending", layout.FILE_ENDING) != layout.FILE_ENDING:
        raise InputError(f"{dataset}: the dataset's file_ending is {existing['file_ending']!r}; this export writes {layout.FILE_ENDING}")


def _check_dataset_folder(dataset: Path) -> None:
    if dataset.exists() and not dataset.is_dir():
        raise InputError(f"{dataset}: is a file, not a dataset folder")
    if dataset.is_dir() and not (dataset / layout.DATASET_FILE).exists() and not (dataset / layout.IMAGES_DIR).is_dir():
        if any(not p.name.startswith(".") for p in dataset.iterdir()):
            raise InputError(
                f"{dataset}: the folder is not empty and is not a training dataset (no dataset.json, no imagesTr); "
                "choose a new or empty folder"
            )


def _check_case_free(dataset: Path, case_id: str, overwrite: bool) -> bool:
    """True when the case exists (and ``overwrite`` allows replacing it); refuse otherwise."""
    taken = case_ids_on_disk(dataset)
    clash = sorted(case for case in taken if case.lower() == case_id.lower() and case != case_id)
    if clash:
        raise InputError(f"case ID {case_id!r}: the dataset has case {clash[0]!r}, which differs only in letter case; choose another ID")
    if case_id in taken and not overwrite:
        raise InputError(f"case {case_id!r} already exists in {dataset} (use --overwrite to replace it)")
    return case_id in taken


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


@dataclass
class PreparedExport:
    """Everything an export writes, read and checked, before anything is written.

    ``provenance.case_id`` is empty when the ID is to be generated (under the lock, so that it is free).
    """

    dataset: Path
    meta: DatasetMeta
    labels: list[LabelInfo]
    images: dict[str, sitk.Image]  # image, label, and ai_label when given, on the image's grid
    provenance: Provenance
    overwrite: bool = False
    extra_formats: list[str] = field(default_factory=list)
    output_dir: Optional[Path] = None
    dicom_segmentation: Any = None  # highdicom Segmentation, for --also dicom-seg
    warnings: list[str] = field(default_factory=list)
    written: Optional[NnunetLabels] = None  # how the label files hold the labels (None: as the model's values)


def _check_destination(dataset: Path, overlap: str, extra_formats: list[str], out_dir: Optional[Path]) -> None:
    if overlap not in OVERLAP_RULES:
        raise InputError(f"overlap rule {overlap!r}: use one of {', '.join(OVERLAP_RULES)}")
    if extra_formats and out_dir is None:
        raise InputError("other formats (--also) need an output folder (--output-dir)")
    if out_dir is not None and (_is_within(out_dir, dataset) or (out_dir.exists() and not out_dir.is_dir())):
        raise InputError(f"{out_dir}: the output folder for other formats must be a folder outside the dataset")
    _check_dataset_folder(dataset)


def prepare_export(
    image: str | os.PathLike | sitk.Image | Sequence[str | os.PathLike | sitk.Image],
    label: LabelSource,
    dataset_dir: str | os.PathLike,
    *,
    ai_label: LabelSource | None = None,
    case_id: str | None = None,
    overwrite: bool = False,
    model: ModelSpec | str | os.PathLike | None = None,
    report: str | os.PathLike | Mapping[str, Any] | None = None,
    formats: str | Iterable[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    dicom_series: str | os.PathLike | None = None,
    identity: Iterable[str] = (),
    overlap: str = "refuse",
    clicks: Sequence[Mapping[str, Any]] | None = None,
) -> PreparedExport:
    """Read and check every input of an export and build its provenance; nothing is written.

    Arguments as :func:`export_case`.

    Raises:
        InputError, ModelError: as :func:`export_case`.
    """
    dataset = Path(dataset_dir)
    extra_formats = parse_formats(formats)
    out_dir = Path(output_dir) if output_dir is not None else None
    _check_destination(dataset, overlap, extra_formats, out_dir)
    existing = layout.read_dataset_json(dataset) if dataset.is_dir() else None
    spec = resolve_model(model)
    labels = _dataset_labels(spec, existing)

    sources = list(image) if isinstance(image, (list, tuple)) else [image]
    volume, source, dicom_folder = read_image(sources[0])
    dicom_folder = Path(dicom_series) if dicom_series is not None else dicom_folder
    identity = list(identity)
    if dicom_folder is not None:
        identity += dicom_identity(dicom_folder)
        source.modality = dicom_modality(dicom_folder) or source.modality
    channel_names = _channel_names(spec, existing, len(sources))
    region_model = spec is not None and spec.activation == "sigmoid" and len(spec.labels) > 1
    written = nnunet_labels(labels, regions=region_model, priority=spec.overlap_priority if spec else None)
    if len(channel_names) > 1:
        channels = {str(index): name for index, name in enumerate(channel_names)}
    else:
        channels = {"0": (spec.modality if spec and spec.modality else None) or source.modality or "image"}
    meta = DatasetMeta(written.labels, channels, written.regions_class_order)
    _check_compatible(dataset, existing, meta)
    if case_id:
        validate_case_id(case_id, identity)
    if "dicom-seg" in extra_formats and dicom_folder is None:
        raise InputError("dicom-seg: the image is not a DICOM series folder; a DICOM SEG needs its source series")
    if overlap == "refuse" and region_model:
        overlap = "model"  # a region model's segments overlap by design: its own label convention flattens them
    prepared = _prepare_labels(volume, label, ai_label, labels, overlap, spec.overlap_priority if spec else None)
    provenance, warnings = _build_provenance(prepared, volume, source, spec, labels, meta, report)
    provenance.case_id = case_id or ""
    if written.remaps:
        provenance.label_values = {str(model): value for model, value in sorted(written.file_values.items())}
    if clicks:
        ai = prepared.get("ai_label")
        provenance.clicks = summarise_clicks(click_records(clicks), prepared["label"][0], ai[0] if ai else None)
    dicom_segmentation = None
    if "dicom-seg" in extra_formats:
        from ..io.dicom_seg import build_dicom_seg

        model_json = provenance.model.to_json() if provenance.model else None
        dicom_segmentation = build_dicom_seg(prepared["label"][0], dicom_folder, labels, model_json)
    images = {
        "image": volume,
        **_other_channels(volume, sources, channel_names),
        **{role: labelmap for role, (labelmap, _) in prepared.items()},
    }
    return PreparedExport(
        dataset, meta, labels, images, provenance, overwrite, extra_formats, out_dir, dicom_segmentation, warnings, written
    )


def _dataset_images(prepared: PreparedExport) -> dict[str, sitk.Image]:
    """The images as the dataset holds them: the label files with nnU-Net's values (``NnunetLabels.file_values``);
    the other formats (``--also``) keep the model's own values."""
    written = prepared.written
    if written is None or not written.remaps:
        return prepared.images
    change = {float(model): float(value) for model, value in written.file_values.items()}
    return {role: sitk.ChangeLabel(image, change) if role in ("label", "ai_label") else image for role, image in prepared.images.items()}


def _channel_names(spec: ModelSpec | None, existing: Mapping[str, Any] | None, given: int) -> list[str]:
    """The case's channel names: the model's; without a model, the dataset's (or ``channel 1``...).

    Raises:
        InputError: a number of images that does not match the model's (or the dataset's) channels.
    """
    if spec is not None:
        names = spec.input_channels()
        where = f"the model {spec.name}"
    else:
        listed = existing.get("channel_names") if existing else None
        names = [str(listed[key]) for key in sorted(listed, key=str)] if isinstance(listed, Mapping) and len(listed) > 1 else []
        names = names or [f"channel {index + 1}" for index in range(given)]
        where = "the dataset"
    if len(names) != given and not (given == 1 and len(names) == 1):
        raise InputError(f"{where} takes {len(names)} image channel(s) ({', '.join(names)}); {given} image(s) given")
    return names


def _other_channels(volume: sitk.Image, sources: list[Any], names: list[str]) -> dict[str, sitk.Image]:
    """The images of channels 1..N, resampled onto channel 0's grid in physical space, as inference does it."""
    if len(sources) <= 1:
        return {}
    from ..engine.inputs import align_to_first, check_distinct_files

    paths = [source for source in sources if not isinstance(source, sitk.Image)]
    if len(paths) == len(sources):
        check_distinct_files(paths, names)
    others = [read_image(source)[0] for source in sources[1:]]
    aligned = align_to_first([volume, *others], names)
    return {layout.image_role(channel): _compact(image) for channel, image in enumerate(aligned) if channel > 0}


def _prepare_labels(
    volume: sitk.Image,
    label: LabelSource,
    ai_label: LabelSource | None,
    labels: list[LabelInfo],
    overlap: str,
    priority: list[int] | None = None,
) -> dict[str, tuple[sitk.Image, LabelRecord]]:
    """The corrected (``label``) and AI (``ai_label``) labelmaps on the image grid, with their label records."""
    result = {}
    for role, source, where in (("label", label, "label"), ("ai_label", ai_label, "AI label")):
        if source is None:
            continue
        labelmap, record = read_label(source, labels, where, overlap, priority)
        labelmap, record.resampled = label_on_image_grid(labelmap, volume, where)
        result[role] = (labelmap, record)
    return result


def _build_provenance(
    prepared: Mapping[str, tuple[sitk.Image, LabelRecord]],
    volume: sitk.Image,
    source: SourceRecord,
    spec: ModelSpec | None,
    labels: list[LabelInfo],
    meta: DatasetMeta,
    report: str | os.PathLike | Mapping[str, Any] | None,
) -> tuple[Provenance, list[str]]:
    """The provenance record (without case ID and checksums yet) and the warnings for the user."""
    warnings = []
    corrected, label_record = prepared["label"]
    if label_record.resampled:
        warnings.append("the corrected label was on another grid: resampled onto the image grid (nearest neighbour)")
    spacing_kji = volume.GetSpacing()[::-1]
    corrected_array = sitk.GetArrayViewFromImage(corrected)
    label_record.statistics = label_statistics(corrected_array, spacing_kji, labels)
    empty = not np.any(corrected_array)
    if empty:
        warnings.append("the corrected label is empty: exported as a case without lesions (flagged empty_label)")
    ai, ai_record = prepared.get("ai_label", (None, None))
    comparison = compare_labels(sitk.GetArrayViewFromImage(ai), corrected_array, spacing_kji) if ai is not None else None
    model = ModelIdentity.of(spec)
    inference = InferenceRecord.read(report)
    if inference and inference.model and model and inference.model.sha256 not in (None, model.sha256):
        warnings.append("the lesion report comes from other model weights than the model recorded for this export")
    software = software_versions(["slicerio"] if label_record.segments is not None else [])
    provenance = Provenance("", "", model, inference, dict(meta.labels), software, source, label_record, bool(empty), ai_record, comparison)
    return provenance, warnings


def commit_export(prepared: PreparedExport) -> dict[str, Any]:
    """Write a prepared export into its dataset (under the lock, through the journal) and the other formats.

    Returns:
        The summary :func:`export_case` describes.

    Raises:
        InputError: the case (or an extra output) exists and ``overwrite`` is not set, the dataset became
            incompatible, or another export holds the lock too long. Nothing is written then.
    """
    dataset = prepared.dataset
    created = not dataset.exists()
    dataset.mkdir(parents=True, exist_ok=True)
    temporary: list[Path] = []
    try:
        with journal.dataset_lock(dataset):
            repaired = journal.recover(dataset, prepared.meta)
            _check_compatible(dataset, layout.read_dataset_json(dataset), prepared.meta)
            provenance = dataclasses.replace(prepared.provenance, case_id=prepared.provenance.case_id or generate_case_id(dataset))
            provenance.created = utc_timestamp()
            replaced = _check_case_free(dataset, provenance.case_id, prepared.overwrite)
            extras = _extra_paths(prepared, provenance.case_id)
            # Other formats go to temporary names first: nothing changes anywhere until everything is written.
            for fmt, path in extras.items():
                temporary.append(path.with_name(f".{provenance.case_id}.{secrets.token_hex(4)}.tmp{_EXTRA_SUFFIX[fmt]}"))
                _write_extra(fmt, temporary[-1], prepared)
            journal.commit_case(dataset, _dataset_images(prepared), provenance, prepared.meta)
            for tmp, path in zip(temporary, extras.values()):
                os.replace(tmp, path)
            temporary = []
            problems = journal.check_dataset(dataset)
    except BaseException:
        for tmp in temporary:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if created:
            journal.cleanup_state(dataset, remove_lock=True)
            with contextlib.suppress(OSError):
                dataset.rmdir()  # only when still empty
        raise
    return _result(prepared, provenance, replaced, list(extras.values()), repaired, problems)


def _extra_paths(prepared: PreparedExport, case_id: str) -> dict[str, Path]:
    if prepared.output_dir is None:
        return {}
    extras = {fmt: prepared.output_dir / f"{case_id}{_EXTRA_SUFFIX[fmt]}" for fmt in prepared.extra_formats}
    for path in extras.values():
        if path.exists() and not prepared.overwrite:
            raise InputError(f"{path}: already exists (use --overwrite to replace it)")
    return extras


def _write_extra(fmt: str, path: Path, prepared: PreparedExport) -> None:
    """Write the corrected label in one of the other formats (``FORMATS``)."""
    labelmap = prepared.images["label"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "seg.nrrd":
        write_seg_nrrd(labelmap, path, prepared.labels, overwrite=True)
    elif fmt == "nifti":
        sitk.WriteImage(strip_metadata(sitk.Image(labelmap)), str(path), useCompression=True)
    else:
        from ..io.dicom_seg import save_dicom_seg

        save_dicom_seg(prepared.dicom_segmentation, path, overwrite=True)


def _result(
    prepared: PreparedExport, provenance: Provenance, replaced: bool, extras: list[Path], repaired: list[str], problems: list[str]
) -> dict[str, Any]:
    dataset, case_id = prepared.dataset, provenance.case_id
    summary = dataset_summary(dataset)
    has_ai = "ai_label" in prepared.images
    statistics = provenance.label.statistics
    result = {
        "case_id": case_id,
        "dataset": str(dataset),
        "files": {
            role: str(dataset / rel)
            for role, rel in layout.case_files(case_id, prepared.meta.channels).items()
            if role != "ai_label" or has_ai
        },
        "extra_files": [str(path) for path in extras],
        "replaced": replaced,
        "empty_label": provenance.empty_label,
        "label": statistics.to_json() if statistics else None,
        "ai_vs_corrected": provenance.ai_vs_corrected.to_json() if provenance.ai_vs_corrected else None,
        "cases": summary["cases"],
        "repaired": repaired,
        "problems": problems,
        "warnings": list(prepared.warnings),
        "dataset_summary": summary,
    }
    result["message"] = _export_message(result)
    return result


def _export_message(result: Mapping[str, Any]) -> str:
    statistics = result["label"]
    text = f"{result['case_id']}: "
    if result["empty_label"]:
        text += "empty label (no lesion)"
    else:
        text += f"{plural(statistics['lesions'], 'lesion')}, {statistics['volume_ml']:.2f} mL"
    comparison = result["ai_vs_corrected"]
    if comparison:
        text += (
            f"; AI vs corrected: Dice {comparison['dice']:.3f}, {plural(comparison['lesions_added'], 'lesion')} added, "
            f"{comparison['lesions_removed']} removed"
        )
    return f"{text}. Dataset: {result['dataset_summary']['sentence']}."


def export_case(
    image: str | os.PathLike | sitk.Image | Sequence[str | os.PathLike | sitk.Image],
    label: LabelSource,
    dataset_dir: str | os.PathLike,
    *,
    ai_label: LabelSource | None = None,
    case_id: str | None = None,
    overwrite: bool = False,
    model: ModelSpec | str | os.PathLike | None = None,
    report: str | os.PathLike | Mapping[str, Any] | None = None,
    formats: str | Iterable[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    dicom_series: str | os.PathLike | None = None,
    identity: Iterable[str] = (),
    overlap: str = "refuse",
    clicks: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Add one corrected case to a training dataset (and optionally write other formats).

    Args:
        image: volume file, DICOM series folder, or a ``SimpleITK.Image``; for a model with several input
            channels a list of them in the model's channel order (written as ``ID_0000``, ``ID_0001``..., each
            resampled onto the first one's grid in physical space).
        label: the corrected segmentation: ``.seg.nrrd`` (segments matched to the model's labels by name and
            terminology), a labelmap file, a ``SimpleITK.Image`` labelmap, or slicerio's segmentation dict.
        dataset_dir: the dataset folder (created when missing; an existing one must be a dataset or empty).
        ai_label: the model's label before correction (same kinds as ``label``).
        case_id: opaque case ID; None generates one (``case_`` + random hex).
        overwrite: replace an existing case with this ID (and existing extra outputs).
        model: model folder or spec whose labels and identity are recorded; None: the default model if
            installed, else the dataset's labels (or one "lesion" label).
        report: the lesion report (``*.lesions.json`` path or dict) of the AI run: its inference settings.
        formats: other formats of the corrected label: ``seg.nrrd``, ``nifti``, ``dicom-seg`` (the last
            needs a DICOM source). Written to ``output_dir`` as ``ID.seg.nrrd``, ``ID.nii.gz``, ``ID.dcm``.
        output_dir: folder for ``formats`` (outside the dataset).
        dicom_series: the source DICOM series folder when ``image`` is not that folder (an image from Slicer).
        identity: extra identity strings (patient name, ID...) the case ID must not contain.
        overlap: ``"refuse"`` overlapping segments of different labels, or ``"highest-label"`` wins, or ``"model"``:
            a region model's own label convention (the default for a sigmoid region model).
        clicks: the "Click to fix" clicks applied to the case (``data.clicks.ClickRecord`` JSON objects): the
            provenance counts them and names the lesions they added.

    Returns:
        A summary: ``case_id``, ``dataset``, ``files`` (absolute paths), ``extra_files``, ``replaced``,
        ``empty_label``, ``label`` (voxels per label, volume_ml, lesions), ``ai_vs_corrected`` (or None),
        ``cases`` (in the dataset now), ``repaired`` and ``problems`` (dataset maintenance), ``warnings``,
        ``message`` (one line for the user) and ``dataset_summary`` (see :func:`dataset_summary`).

    Raises:
        InputError: unreadable, 2D/4D or mismatched inputs, unknown or overlapping segments, an existing case
            without ``overwrite``, an incompatible dataset. Nothing is written then.
        ModelError: the model folder cannot be read.
    """
    prepared = prepare_export(
        image,
        label,
        dataset_dir,
        ai_label=ai_label,
        case_id=case_id,
        overwrite=overwrite,
        model=model,
        report=report,
        formats=formats,
        output_dir=output_dir,
        dicom_series=dicom_series,
        identity=identity,
        overlap=overlap,
        clicks=clicks,
    )
    return commit_export(prepared)
