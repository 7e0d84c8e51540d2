"""Multi-sequence input and multi-label outputs with real MONAI networks trained here (2 and 4 input channels,
3 outputs), sequences on different grids (size, spacing, LPS / RAS / oblique), the real command line and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import SEQUENCES, empty_grid, oblique_direction, physical_points, run_cli, sequence_case, tumour_masks, verify_with_nnunet
from SegmentLesionLib.data.labels import segments_to_labelmap
from SegmentLesionLib.engine.inference import Segmenter
from SegmentLesionLib.engine.inputs import align_to_first, match_channels, parse_channel_argument
from SegmentLesionLib.engine.metrics import dice
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.volume import read_labelmap
from SegmentLesionLib.io.writers import LABEL_VALUE_TAG, write_labelmap
from SegmentLesionLib.models.spec import load_spec

CENTRE = (3.0, -2.0, 1.5)  # LPS mm: the tumour, at the same physical place in every sequence
VESSELS = [(-12.0, 10.0, 6.0)]  # bright in T1c only
RAS_DIRECTION = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


def study_grids() -> dict[str, sitk.Image]:
    """Four sequences on three grids: T1c and T1 share one (LPS, 1 mm); T2 coarser, anisotropic and shifted;
    FLAIR finer, stored RAS (axes flipped), bigger and with another origin."""
    t1c = empty_grid((40, 36, 32), (1.0, 1.0, 1.0), (-20.0, -18.0, -16.0))
    return {
        "T1c": t1c,
        "T1": t1c,
        "T2": empty_grid((34, 32, 24), (1.3, 1.2, 1.5), (-21.0, -19.0, -17.0)),
        "FLAIR": empty_grid((48, 44, 40), (0.9, 0.9, 0.9), (22.0, 20.0, -18.0), RAS_DIRECTION),
    }


def truth_on(grid: sitk.Image, centre=CENTRE) -> dict[str, np.ndarray]:
    return tumour_masks(physical_points(grid), centre, VESSELS)


def centroid_ijk(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)[::-1]


# --- inputs: names and geometry ---------------------------------------------------------------------------
def test_channels_are_matched_by_name_case_insensitively_and_refused_clearly():
    names = ["T1c", "T1", "T2", "FLAIR"]
    given = [("flair", "d"), ("t1C", "a"), ("T2", "c"), ("t1", "b")]
    assert match_channels(given, names, 4, "BraTS") == ["a", "b", "c", "d"]
    assert parse_channel_argument("T1c=scans/a=b.nii.gz").name == "T1c"
    with pytest.raises(InputError, match=r"'ADC' is not an input channel of BraTS \(its channels: T1c, T1, T2, FLAIR\)"):
        match_channels([("ADC", "x")], names, 4, "BraTS")
    with pytest.raises(InputError, match="channel T1 is given twice"):
        match_channels([("T1", "a"), ("t1", "b")], names, 4, "BraTS")
    with pytest.raises(InputError, match=r"no input for channel\(s\) T2, FLAIR"):
        match_channels([("T1c", "a"), ("T1", "b")], names, 4, "BraTS")
    with pytest.raises(InputError, match="give each as NAME=PATH, e.g. T1c=a.nii.gz"):
        match_channels([(None, "a.nii.gz")] * 4, names, 4, "BraTS")
    with pytest.raises(InputError, match=r"takes 1 input channel\(s\) \(image\); 2 given"):
        match_channels([("T1", "a"), ("T2", "b")], [], 1, "Brain")
    assert match_channels([(None, "a")], [], 1, "Brain") == ["a"]


def test_sequences_on_three_grids_are_aligned_in_physical_space():
    grids = study_grids()
    grids["T2"] = empty_grid((34, 32, 24), (1.3, 1.2, 1.5), (-21.0, -19.0, -17.0), oblique_direction(15))
    images = sequence_case(grids, CENTRE, VESSELS, seed=1)
    aligned = align_to_first([images[name] for name in SEQUENCES], list(SEQUENCES))
    truth = truth_on(grids["T1c"])
    assert all(image.GetSize() == grids["T1c"].GetSize() for image in aligned)
    flair, t2 = (sitk.GetArrayFromImage(aligned[index]) for index in (3, 2))
    # Each sequence's own contrast lies where the tumour is on T1c's grid (thresholds halfway up the contrast).
    assert dice(flair > 1200 + 2 * 90, truth["WT"]) > 0.9
    assert dice(t2 > 80 + 2 * 10, truth["TC"]) > 0.85
    # Voxels beyond a sequence's own field of view take its background, not 0 (T2 is smaller than T1c).
    assert float(sitk.GetArrayViewFromImage(aligned[2]).min()) > 0.0


def test_sequences_that_do_not_overlap_are_refused_with_their_extents():
    near = empty_grid((10, 10, 10), origin=(0.0, 0.0, 0.0))
    far = empty_grid((10, 10, 10), origin=(500.0, 0.0, 0.0), direction=RAS_DIRECTION)
    images = sequence_case({"T1c": near, "FLAIR": far}, CENTRE)
    with pytest.raises(InputError) as error:
        align_to_first([images["T1c"], images["FLAIR"]], ["T1c", "FLAIR"])
    message = str(error.value)
    assert message.startswith("FLAIR does not overlap T1c in space")
    # Both extents in Slicer's RAS millimetres: FLAIR (stored RAS: its axes run to the right and anterior of L 500).
    assert "FLAIR covers R -500.5..-490.5, A -0.5..9.5, S -0.5..9.5 mm" in message
    assert "T1c covers R -9.5..0.5, A -9.5..0.5, S -0.5..9.5 mm" in message


def test_model_folders_check_their_channels(softmax_sequence_model, tmp_path):
    import shutil

    spec = load_spec(softmax_sequence_model)
    assert spec.channel_names == ["T1c", "FLAIR"] and spec.in_channels == 2 and spec.input_channels() == ["T1c", "FLAIR"]
    metadata_path = softmax_sequence_model / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "T1c", "1": "FLAIR"}
    for change, message in (
        ({"channel_names": ["T1c"]}, r"1 channel names \(T1c\) for 2 input channel\(s\)"),
        ({"channel_names": ["T1c", "t1c"]}, "channel names must differ"),
        ({"in_channels": 3, "channel_names": ["A", "B", "C"]}, "in_channels is 3, but network_def has in_channels 2"),
        ({"overlap_priority": [2, 1]}, "overlap_priority is for sigmoid region models"),
    ):
        folder = tmp_path / f"model{len(list(tmp_path.iterdir()))}"
        shutil.copytree(softmax_sequence_model, folder)
        edited = json.loads(metadata_path.read_text())
        edited["segment_lesion"].update(change)
        (folder / "configs" / "metadata.json").write_text(json.dumps(edited))
        with pytest.raises(ModelError, match=message):
            load_spec(folder)


# --- the engine: lesions land where they are, whatever the grids --------------------------------------------
@pytest.mark.parametrize("flair_direction", [RAS_DIRECTION, (1, 0, 0, 0, 1, 0, 0, 0, 1)], ids=["FLAIR-RAS", "FLAIR-LPS"])
def test_softmax_model_gives_one_label_per_voxel_and_lesions_by_label(softmax_sequence_model, flair_direction):
    grids = study_grids()
    grids["FLAIR"] = empty_grid(
        (48, 44, 40), (0.9, 0.9, 0.9), (22.0, 20.0, -18.0) if flair_direction == RAS_DIRECTION else (-20.0, -19.0, -17.0), flair_direction
    )
    images = sequence_case(grids, CENTRE, VESSELS, seed=2)
    segmenter = Segmenter(softmax_sequence_model, "cpu")
    result = segmenter.segment(align_to_first([images["T1c"], images["FLAIR"]], ["T1c", "FLAIR"]))
    truth = truth_on(grids["T1c"])
    labels = sitk.GetArrayFromImage(result.labelmap)
    assert result.labelmap.GetSize() == grids["T1c"].GetSize() and result.regions is None
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert dice(labels > 0, truth["WT"]) > 0.75
    assert dice(labels == 2, truth["ET"]) > 0.5
    assert not (labels[truth["vessel"]] == 2).any()  # bright in T1c alone is no enhancing tumour: FLAIR counts
    # The enhancing tumour's centre is at the tumour's physical centre, on T1c's voxel grid.
    expected = np.asarray(grids["T1c"].TransformPhysicalPointToContinuousIndex(CENTRE))
    assert np.linalg.norm(centroid_ijk(labels == 2) - expected) < 1.0
    # Lesions grouped by label: edema's first, then the enhancing tumour's, ids running on.
    assert [lesion.label for lesion in result.lesions] == sorted(lesion.label for lesion in result.lesions)
    assert [lesion.id for lesion in result.lesions] == list(range(1, len(result.lesions) + 1))
    groups = result.report.to_json()["labels"]
    assert [(group["value"], group["name"]) for group in groups] == [(1, "Edema"), (2, "Enhancing tumor")]
    assert all(group["lesions"] for group in groups)
    assert sum(group["volume_ml"] for group in groups) == pytest.approx(result.report.total_volume_ml)


def test_region_model_regions_overlap_and_the_labelmap_follows_its_convention(region_sequence_model, tmp_path):
    grids = study_grids()
    images = sequence_case(grids, CENTRE, VESSELS, seed=3)
    segmenter = Segmenter(region_sequence_model, "cpu")
    result = segmenter.segment(align_to_first([images[name] for name in SEQUENCES], list(SEQUENCES)))
    truth = truth_on(grids["T1c"])
    regions = result.regions
    assert regions is not None and regions.shape == (3, 32, 36, 40) and regions.dtype == bool
    for index, (name, least) in enumerate((("TC", 0.8), ("WT", 0.75), ("ET", 0.4))):  # a tiny network, 100 iterations
        assert dice(regions[index], truth[name]) > least, name
    assert (regions[2] & regions[1]).sum() > 0.8 * regions[2].sum()  # enhancing tumour lies inside the whole tumour
    labels = sitk.GetArrayFromImage(result.labelmap)
    # BraTS' convention ([4, 1, 2]): enhancing 4 wins, then core 1, then whole tumour 2.
    assert np.array_equal(labels, np.where(regions[2], 4, np.where(regions[0], 1, np.where(regions[1], 2, 0))))
    expected = np.asarray(grids["T1c"].TransformPhysicalPointToContinuousIndex(CENTRE))
    for index in range(3):
        assert np.linalg.norm(centroid_ijk(regions[index]) - expected) < 1.0
    report = result.report.to_json()
    assert report["regions_overlap"] is True
    assert report["total_volume_ml"] == pytest.approx(regions.any(axis=0).sum() / 1000.0)
    assert [group["value"] for group in report["labels"]] == [1, 2, 4]
    assert {lesion["label"] for lesion in report["lesions"]} == {1, 2, 4}

    # .seg.nrrd: one segment per region, overlapping (several layers); flattened in file order = the labelmap.
    spec = segmenter.spec
    seg_path = write_labelmap(result.labelmap, tmp_path / "case.seg.nrrd", spec.labels, True, regions, spec.overlap_priority)
    segmentation = slicerio.read_segmentation(str(seg_path))
    assert segmentation["voxels"].ndim == 4
    segments = segmentation["segments"]
    assert [segment["name"] for segment in segments] == ["Whole tumor", "Tumor core", "Enhancing tumor"]  # paint order
    by_value = {int(segment["tags"][LABEL_VALUE_TAG]): segment for segment in segments}
    flat = np.zeros(regions.shape[1:], np.uint8)
    for value, index in ((2, 1), (1, 0), (4, 2)):
        mask = np.transpose(slicerio.segment_mask(segmentation, by_value[value]), (2, 1, 0))
        assert np.array_equal(mask, regions[index])
        flat[mask] = value
    assert np.array_equal(flat, labels)
    # The export flattens a region model's overlapping segments by its convention, not by refusing them.
    for priority in (spec.overlap_priority, None):  # without one the smaller (inner) region wins: the same here
        exported, _ = segments_to_labelmap(segmentation, spec.labels, overlap="model", priority=priority)
        assert np.array_equal(sitk.GetArrayFromImage(exported), labels)
    with pytest.raises(InputError, match="overlap in"):
        segments_to_labelmap(segmentation, spec.labels)
    nifti = write_labelmap(result.labelmap, tmp_path / "case.nii.gz", spec.labels, True, regions, spec.overlap_priority)
    assert np.array_equal(sitk.GetArrayFromImage(read_labelmap(nifti)), labels)


# --- the command line -------------------------------------------------------------------------------------
def _write_study(folder, seed=4):
    folder.mkdir(parents=True, exist_ok=True)
    images = sequence_case(study_grids(), CENTRE, VESSELS, seed=seed)
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"case_{name.lower()}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def test_cli_segments_four_sequences_given_by_name(region_sequence_model, tmp_path):
    paths = _write_study(tmp_path / "study")
    output = tmp_path / "out" / "case.nii.gz"
    args = [f"{name.lower()}={paths[name]}" for name in ("FLAIR", "T2", "T1", "T1c")]  # any order, any case
    run_cli("segment", *args, "--model", region_sequence_model, "--output", output, "--device", "cpu", check_exit=0)
    labels = sitk.ReadImage(str(output))
    assert labels.GetSize() == sitk.ReadImage(str(paths["T1c"])).GetSize()  # the first channel's grid
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == {0, 1, 2, 4}
    report = json.loads((tmp_path / "out" / "case.lesions.json").read_text())
    assert [group["name"] for group in report["labels"]] == ["Tumor core", "Whole tumor", "Enhancing tumor"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["T1c={T1c}", "T1={T1}", "T2={T2}"], r"no input for channel\(s\) FLAIR"),
        (["T1c={T1c}", "T1={T1}", "T2={T2}", "DWI={FLAIR}"], r"'DWI' is not an input channel of TumourTestSigmoid"),
        (["T1c={T1c}", "T1={T1c}", "T2={T2}", "FLAIR={FLAIR}"], "the same file is given for channels T1c and T1"),
        (["{T1c}", "{T1}", "{T2}", "{FLAIR}"], "give each as NAME=PATH"),
        (["T1c={T1c}", "T1={T1}", "T2={T2}", "FLAIR={far}"], "FLAIR does not overlap T1c in space"),
    ],
    ids=["missing", "unknown", "same-file", "no-names", "no-overlap"],
)
def test_cli_refuses_bad_channel_inputs_with_one_line(region_sequence_model, tmp_path, arguments, message):
    paths = {name: str(path) for name, path in _write_study(tmp_path / "study").items()}
    far = sequence_case({"FLAIR": empty_grid((10, 10, 10), origin=(900.0, 0.0, 0.0))}, CENTRE)["FLAIR"]
    paths["far"] = str(tmp_path / "far.nii.gz")
    sitk.WriteImage(far, paths["far"])
    output = tmp_path / "out.seg.nrrd"
    result = run_cli(
        "segment", *[a.format(**paths) for a in arguments], "--model", region_sequence_model, "--output", output, "--device", "cpu"
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert __import__("re").search(message, result.stderr), result.stderr
    assert not output.exists() and list(tmp_path.glob("out*")) == []


def test_cli_single_channel_model_keeps_its_plain_form_and_refuses_two_names(model_3d, tmp_path):
    paths = _write_study(tmp_path / "study")
    result = run_cli("segment", f"T1={paths['T1']}", f"T2={paths['T2']}", "--model", model_3d, "--output", tmp_path / "o.nii.gz")
    assert result.returncode == 1 and r"takes 1 input channel(s) (image); 2 given" in result.stderr
    run_cli("segment", f"image={paths['T1']}", "--model", model_3d, "--output", tmp_path / "named.nii.gz", "--device", "cpu", check_exit=0)
    run_cli("segment", paths["T1"], "--model", model_3d, "--output", tmp_path / "plain.nii.gz", "--device", "cpu", check_exit=0)
    named, plain = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nii.gz"))) for n in ("named", "plain"))
    assert np.array_equal(named, plain)


# --- datasets: export, train and evaluate with several channels ----------------------------------------------
def test_nnunet_labels_renumber_to_consecutive_values_and_nest_regions():
    from SegmentLesionLib.data.labels import nnunet_labels
    from SegmentLesionLib.models.spec import LabelInfo

    plain = nnunet_labels([LabelInfo(1, "lesion", [1, 0, 0])])
    assert plain.labels == {"background": 0, "lesion": 1} and not plain.remaps and plain.regions_class_order is None
    gap = nnunet_labels([LabelInfo(3, "oedema", [1, 0, 0]), LabelInfo(1, "core", [0, 1, 0])])
    assert gap.labels == {"background": 0, "core": 1, "oedema": 2} and gap.file_values == {1: 1, 3: 2} and gap.remaps
    brats = [LabelInfo(1, "TC", [1, 0, 0]), LabelInfo(2, "WT", [0, 1, 0]), LabelInfo(4, "ET", [0, 0, 1])]
    nested = nnunet_labels(brats, regions=True, priority=[4, 1, 2])
    assert nested.labels == {"background": 0, "WT": [1, 2, 3], "TC": [2, 3], "ET": [3]} and nested.regions_class_order == [1, 2, 3]
    assert nested.file_values == {2: 1, 1: 2, 4: 3}
    with pytest.raises(ModelError, match="must list each label value"):
        nnunet_labels(brats, regions=True, priority=[4, 1])
    with pytest.raises(ModelError, match="used twice"):
        nnunet_labels([LabelInfo(1, "a", [1, 0, 0]), LabelInfo(2, "a", [1, 0, 0])])


def test_region_model_export_is_an_nnunet_region_dataset_as_nnunets_own_brats_conversion(region_sequence_model, tmp_path, capfd):
    """BraTS-style regions (label values 1/2/4, nested) cannot be nnU-Net label values (1..N): the export writes
    them as nnU-Net's Dataset137_BraTS21 conversion does: 2/1/4 -> 1/2/3, regions listed outermost first."""
    from monai.data import load_decathlon_datalist
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset = tmp_path / "Dataset603_Regions"
    grids = study_grids()
    flat = None
    for index, centre in enumerate([(3.0, -2.0, 1.5), (-4.0, 3.0, -2.0)]):
        folder = tmp_path / f"case{index}"
        paths = _write_study(folder, seed=20 + index)
        masks = truth_on(grids["T1c"], centre)
        # The model's own convention: enhancing 4, the rest of the core 1, the rest of the whole tumour 2.
        values = np.where(masks["ET"], 4, np.where(masks["TC"], 1, np.where(masks["WT"], 2, 0))).astype(np.uint8)
        flat = values if flat is None else flat
        label = sitk.GetImageFromArray(values)
        label.CopyInformation(grids["T1c"])
        sitk.WriteImage(label, str(folder / "label.nii.gz"))
        images = [f"--image={name}={paths[name]}" for name in SEQUENCES]
        also = ["--also", "nifti", "--output-dir", tmp_path / "other"] if index == 0 else []
        run_cli("export", *images, "--label", folder / "label.nii.gz", "--dataset", dataset, "--case-id", f"case{index}",
                "--model", region_sequence_model, *also, check_exit=0)  # fmt: skip
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Whole tumor": [1, 2, 3], "Tumor core": [2, 3], "Enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "case0.nii.gz")))
    assert np.array_equal(written, np.select([flat == 2, flat == 1, flat == 4], [1, 2, 3], 0))
    # nnU-Net's own label handling turns the file back into the three regions the model segments.
    manager = LabelManager(meta["labels"], meta["regions_class_order"])
    assert manager.has_regions and manager.foreground_regions == [(1, 2, 3), (2, 3), (3,)]
    masks = truth_on(grids["T1c"], (3.0, -2.0, 1.5))
    for region, name in zip(manager.foreground_regions, ("WT", "TC", "ET")):
        assert np.array_equal(np.isin(written, region), masks[name]), name
    provenance = json.loads((dataset / "provenance" / "case0.json").read_text())
    assert provenance["label_values"] == {"1": 2, "2": 1, "4": 3} and provenance["labels"] == meta["labels"]
    # The other formats keep the model's own values.
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "other" / "case0.nii.gz"))), flat)
    verify_with_nnunet(dataset, capfd)
    cases = load_decathlon_datalist(str(dataset / "dataset.json"), is_segmentation=True, data_list_key="training")
    assert [len(case["image"]) for case in cases] == [4, 4]
    # segment-lesion's own trainer takes label datasets: one line pointing at nnU-Net.
    result = run_cli("train", "--dataset", dataset, "--output", tmp_path / "m", "--init", region_sequence_model, "--device", "cpu")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "is for nnU-Net" in result.stderr


def test_multi_channel_dataset_exports_trains_and_evaluates(softmax_sequence_model, tmp_path, capfd):
    from monai.data import load_decathlon_datalist

    dataset = tmp_path / "Dataset602_TwoChannels"
    grids = study_grids()
    for index, centre in enumerate([(3.0, -2.0, 1.5), (-4.0, 3.0, -2.0)]):
        images = sequence_case(grids, centre, VESSELS, seed=10 + index)
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        for name in ("T1c", "FLAIR"):
            sitk.WriteImage(images[name], str(folder / f"{name}.nii.gz"))
        masks = truth_on(grids["T1c"], centre)
        label = sitk.GetImageFromArray(np.where(masks["ET"], 2, np.where(masks["WT"], 1, 0)).astype(np.uint8))
        label.CopyInformation(grids["T1c"])
        sitk.WriteImage(label, str(folder / "label.nii.gz"))
        run_cli(
            "export",
            "--image",
            f"flair={folder / 'FLAIR.nii.gz'}",  # any order: matched to the model's channels by name
            "--image",
            f"T1c={folder / 'T1c.nii.gz'}",
            "--label",
            folder / "label.nii.gz",
            "--dataset",
            dataset,
            "--case-id",
            f"case{index}",
            "--model",
            softmax_sequence_model,
            check_exit=0,
        )
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1c", "1": "FLAIR"} and meta["numTraining"] == 2
    assert meta["training"][0]["image"] == ["./imagesTr/case0_0000.nii.gz", "./imagesTr/case0_0001.nii.gz"]
    flair = sitk.ReadImage(str(dataset / "imagesTr" / "case0_0001.nii.gz"))
    assert flair.GetSize() == grids["T1c"].GetSize() and flair.GetDirection() == grids["T1c"].GetDirection()
    verify_with_nnunet(dataset, capfd)
    cases = load_decathlon_datalist(str(dataset / "dataset.json"), is_segmentation=True, data_list_key="training")
    assert [len(case["image"]) for case in cases] == [2, 2]

    # A missing channel is refused with one line, nothing written.
    before = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    result = run_cli(
        "export",
        "--image",
        f"T1c={tmp_path / 'case0' / 'T1c.nii.gz'}",
        "--label",
        tmp_path / "case0" / "label.nii.gz",
        "--dataset",
        dataset,
        "--model",
        softmax_sequence_model,
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "no input for channel(s) FLAIR" in result.stderr
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == before

    metrics = tmp_path / "metrics.json"
    run_cli("evaluate", "--dataset", dataset, "--model", softmax_sequence_model, "--output", metrics, "--device", "cpu", check_exit=0)
    scores = json.loads(metrics.read_text())
    assert [case["case_id"] for case in scores["cases"]] == ["case0", "case1"] and scores["mean"]["dice"] > 0.7

    # Fine-tuning keeps the channels; training from scratch builds a two-channel network named after them.
    for init, name in ((softmax_sequence_model, "tuned"), ("scratch", "scratch")):
        out = tmp_path / name
        args = ["--init", str(init), "--patch-size", "16", "--batch-size", "2", "--iterations-per-epoch", "2", "--max-epochs", "1"]
        if init == "scratch":
            args += ["--channels", "4", "8", "16"]
        run_cli("train", "--dataset", dataset, "--output", out, *args, "--device", "cpu", check_exit=0)
        spec = load_spec(out)
        assert spec.in_channels == 2 and spec.channel_names == ["T1c", "FLAIR"] and spec.network_def["in_channels"] == 2
