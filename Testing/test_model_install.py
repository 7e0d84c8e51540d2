"""Offline install: ``segment-lesion models install ARCHIVE_OR_FOLDER [--sha256 HEX]`` (a bundle zip as the MONAI
Model Zoo distributes it, or a folder): checksum verified, loaded once, registered; hostile archives refused."""

from __future__ import annotations

import json
import stat
import warnings
import zipfile

import pytest
from conftest import run_cli
from model_zoo_runs import make_bundle
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.files import sha256_file
from SegmentLesionLib.learning.registry import Registry


def _zip_folder(folder, archive):
    """Zip ``folder`` as the Model Zoo's downloads are laid out: one top-level folder named after the bundle."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, path.relative_to(folder.parent).as_posix())
    return archive


@pytest.fixture(scope="module")
def spleen_zip(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    bundle = make_bundle("spleen_ct_segmentation", root / "spleen_ct_segmentation")
    return _zip_folder(bundle, root / "spleen_ct_segmentation_v0.5.9.zip")


def test_install_a_model_zoo_zip_with_its_checksum_from_the_command_line(tmp_path, spleen_zip):
    registry = tmp_path / "registry"
    result = run_cli("models", "install", spleen_zip, "--sha256", sha256_file(spleen_zip).upper(), "--registry", registry, "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    assert entry["name"] == "Spleen CT segmentation" and entry["version"] == "0.5.9" and entry["active"]
    installed = Registry(registry).model_dir("active")
    assert str(installed) == entry["path"] and (installed / "configs" / "inference.json").is_file()
    assert (installed / "configs" / "inference.json").read_bytes() == (
        spleen_zip.parent / "spleen_ct_segmentation" / "configs" / "inference.json"
    ).read_bytes()
    assert entry["sha256"] == sha256_file(installed / "models" / "model.pt")


def test_a_checksum_that_does_not_match_installs_nothing(tmp_path, spleen_zip):
    registry = tmp_path / "registry"
    result = run_cli("models", "install", spleen_zip, "--sha256", "0" * 64, "--registry", registry)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sha256 mismatch" in lines[0] and sha256_file(spleen_zip) in lines[0]
    assert not registry.exists()
    with pytest.raises(InputError, match="64 hexadecimal digits"):
        Registry(registry).install(spleen_zip, "abc")


def test_install_a_folder_checks_the_weights_checksum(tmp_path):
    folder = make_bundle("prostate_mri_anatomy", tmp_path / "prostate_mri_anatomy")
    registry = Registry(tmp_path / "registry")
    with pytest.raises(InputError, match="the weights file has"):
        registry.install(folder, "f" * 64)
    entry = registry.install(folder, sha256_file(folder / "models" / "model.pt"))
    assert entry.name == "Prostate MRI anatomy" and registry.index().active == entry.id


def test_an_unsafe_bundle_in_an_archive_is_refused_and_nothing_registered(tmp_path):
    marker = tmp_path / "pwned"
    folder = make_bundle("spleen_ct_segmentation", tmp_path / "zoo" / "spleen_ct_segmentation")
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config["initialize"] = []  # host sections may hold anything: ignored
    config["postprocessing"]["transforms"].append(
        {"_target_": "monai.transforms.Lambdad", "keys": "pred", "func": f"$lambda x: open('{marker}', 'w')"}
    )
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    archive = _zip_folder(folder, tmp_path / "spleen.zip")
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ModelError, match="lambda x: open"):
        registry.install(archive)
    assert registry.entries() == [] and not marker.exists()


def _hostile_zip(path, kind):
    with zipfile.ZipFile(path, "w") as zipped:
        if kind == "traversal":
            zipped.writestr("bundle/configs/metadata.json", "{}")
            zipped.writestr("../escaped.txt", "x")
        elif kind == "absolute":
            zipped.writestr("/tmp/segment-lesion-absolute.txt", "x")
        elif kind == "link":
            info = zipfile.ZipInfo("bundle/models/model.pt")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zipped.writestr(info, "/etc/passwd")
        elif kind == "duplicate":
            zipped.writestr("bundle/configs/metadata.json", "{}")
            with warnings.catch_warnings():  # zipfile warns about the duplicate it is asked to write
                warnings.simplefilter("ignore")
                zipped.writestr("bundle/configs/metadata.json", "{}")
        elif kind == "empty":
            zipped.writestr("README.txt", "no bundle here")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("traversal", "a path outside its folder"),
        ("absolute", "a path outside its folder"),
        ("link", "a link or special file"),
        ("duplicate", "names one file twice"),
        ("empty", "no MONAI bundle in the archive"),
    ],
)
def test_hostile_or_empty_archives_are_refused(tmp_path, kind, message):
    archive = _hostile_zip(tmp_path / f"{kind}.zip", kind)
    registry = Registry(tmp_path / "registry")
    with pytest.raises(InputError, match=message):
        registry.install(archive)
    assert not (tmp_path / "escaped.txt").exists() and registry.entries() == []


def test_not_an_archive_is_refused(tmp_path):
    fake = tmp_path / "model.zip"
    fake.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="not a zip archive"):
        Registry(tmp_path / "registry").install(fake)
    with pytest.raises(InputError, match="not found"):
        Registry(tmp_path / "registry").install(tmp_path / "missing.zip")
