"""The model registry: versions, promotion by evaluation on a fixed dataset, rollback, history, locking."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_model
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.files import sha256_file
from SegmentLesionLib.learning.registry import REGISTRY_ENV, Registry, default_registry_path
from SegmentLesionLib.models.spec import WEIGHTS_FILE
from test_evaluation import write_blob_dataset

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "SegmentLesion"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "SegmentLesionLib", *map(str, args)], capture_output=True, text=True, timeout=300)


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def eval_dataset(tmp_path_factory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("registry") / "Dataset002_Eval", seeds=(11, 12, 13))


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "random", seed=3)


@pytest.fixture(scope="module")
def blind_models(tmp_path_factory) -> list[Path]:
    """Two different models that never predict a lesion: they tie at mean Dice 0 on any dataset with lesions."""
    folder = tmp_path_factory.mktemp("models")
    return [make_model(folder / f"blind{seed}", seed=seed, threshold=2.0) for seed in (1, 2)]


def test_add_list_get_and_reload(blob_model, random_model, tmp_path):
    path = tmp_path / "registry"
    registry = Registry(path)
    assert registry.entries() == [] and registry.active() is None and registry.history() == []
    source_before = folder_digest(blob_model)

    first = registry.add(blob_model)
    assert first["id"] == "v1" and first["active"]  # the first version of an empty registry is active
    assert first["sha256"] == sha256_file(blob_model / WEIGHTS_FILE)
    assert (first["name"], first["version"], first["parent_id"]) == ("BlobTestModel", "0.0.1", None)
    copied = Path(first["path"])
    assert copied.parent == (path / "models").resolve() and folder_digest(copied) == source_before
    assert folder_digest(blob_model) == source_before
    assert (copied / WEIGHTS_FILE).stat().st_mode & 0o222 == 0  # registered folders are not edited in place

    second = registry.add(random_model)
    assert second["id"] == "v2" and not second["active"]
    with pytest.raises(InputError, match="registered already as v1"):
        registry.add(blob_model)

    # A model fine-tuned from v1 names its parent's sha256 in its training metadata: the link is found.
    child = make_model(
        tmp_path / "child", seed=7, training={"parent": {"name": "BlobTestModel", "version": "0.0.1", "sha256": first["sha256"]}, "dataset": "Dataset009_Corrected", "cases": 6}
    )  # fmt: skip
    third = registry.add(child)
    assert (third["parent_id"], third["parent_sha256"]) == ("v1", first["sha256"])
    assert third["source"]["dataset"] == "Dataset009_Corrected" and third["source"]["cases"] == 6
    fourth = registry.add(make_model(tmp_path / "other", seed=8), parent="v2")
    assert fourth["parent_id"] == "v2"

    reloaded = Registry(path)
    assert [e["id"] for e in reloaded.entries()] == ["v1", "v2", "v3", "v4"]
    assert reloaded.active()["id"] == "v1" and reloaded.active_model_dir() == copied
    assert reloaded.get(first["sha256"][:10])["id"] == "v1" and reloaded.get("active")["id"] == "v1"
    assert [(e["event"], e["id"]) for e in reloaded.history()] == [("activate", "v1")]
    assert not [p for p in (path / "models").iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(InputError, match="no model version 'v9'"):
        reloaded.get("v9")

    listing = run_cli("models", "list", "--registry", path)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert ["*", "v1", "BlobTestModel", "0.0.1", first["sha256"][:12]] == next(r for r in rows if "v1" in r)[:5]
    assert next(r for r in rows if r[0] == "v3")[3:5] == [third["sha256"][:12], "v1"]  # no active mark: one column less
    assert run_cli("models", "path", "--registry", path).stdout.strip() == str(copied)


def test_promote_refused_when_worse_forced_with_reason_then_rollback(blob_model, random_model, eval_dataset, tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.add(blob_model)
    candidate = registry.add(random_model)
    folders_before = {e["id"]: folder_digest(Path(e["path"])) for e in registry.entries()}

    decision = registry.promote(candidate["id"], eval_dataset, device="cpu")
    assert not decision["promoted"] and not decision["forced"]
    assert decision["candidate"]["dice"] < decision["active"]["dice"]  # both reported
    assert decision["active"]["id"] == "v1" and decision["dataset"]["case_ids"] == ["blob_011", "blob_012", "blob_013"]
    assert "not promoted" in decision["message"]
    assert registry.active()["id"] == "v1"
    refused = registry.history()[-1]
    assert refused["event"] == "refused" and refused["dice"]["active"] == pytest.approx(decision["active"]["dice"])

    with pytest.raises(InputError, match="--force needs a --reason"):
        registry.promote(candidate["id"], eval_dataset, force=True)
    forced = registry.promote(candidate["id"], eval_dataset, force=True, reason="testing the override", device="cpu")
    assert forced["promoted"] and forced["forced"] and forced["reason"] == "testing the override"
    assert forced["candidate"]["cached"] and forced["active"]["cached"]  # same weights, same data: not evaluated again
    assert registry.active()["id"] == "v2"
    assert registry.history()[-1]["event"] == "promote" and registry.history()[-1]["reason"] == "testing the override"

    event = registry.rollback(reason="worse on the evaluation set")
    assert (event["event"], event["id"], event["from"]) == ("rollback", "v1", "v2")
    assert Registry(registry.path).active()["id"] == "v1"
    assert registry.rollback("v2")["id"] == "v2"  # any earlier active version
    assert registry.rollback("v1")["id"] == "v1"
    never = registry.add(make_model(tmp_path / "never", seed=9))
    with pytest.raises(InputError, match="was never the active model"):
        registry.rollback(never["id"])
    with pytest.raises(InputError, match="active model already"):
        registry.rollback("v1")
    assert [e["event"] for e in registry.history()] == ["activate", "refused", "promote", "rollback", "rollback", "rollback"]
    # Rollback moves the pointer only: no registered folder changed.
    assert {e["id"]: folder_digest(Path(e["path"])) for e in registry.entries() if e["id"] in folders_before} == folders_before


def test_promote_accepted_when_better_or_equal(blob_model, random_model, blind_models, eval_dataset, tmp_path):
    registry = Registry(tmp_path / "better")
    registry.add(random_model)
    better = registry.add(blob_model)
    comparison = registry.compare(better["id"], eval_dataset, device="cpu")  # what the panel shows before promoting
    assert comparison["at_least_as_good"] and registry.active()["id"] == "v1" and len(registry.history()) == 1
    decision = registry.promote(better["id"], eval_dataset, device="cpu")
    assert decision["candidate"]["cached"] and decision["active"]["cached"]
    assert decision["promoted"] and not decision["forced"]
    assert decision["candidate"]["dice"] > decision["active"]["dice"] + 0.3
    assert registry.active()["id"] == better["id"]
    again = registry.promote(better["id"], eval_dataset)
    assert again["already_active"] and not again["promoted"]

    tie = Registry(tmp_path / "tie")
    tie.add(blind_models[0])
    second = tie.add(blind_models[1])
    decision = tie.promote(second["id"], eval_dataset, device="cpu")
    assert decision["candidate"]["dice"] == decision["active"]["dice"] == 0.0
    assert decision["promoted"] and tie.active()["id"] == second["id"]


def test_evaluation_cache_is_keyed_by_weights_and_data(blob_model, tmp_path):
    dataset = write_blob_dataset(tmp_path / "Dataset003_Changing", seeds=(51, 52))
    registry = Registry(tmp_path / "registry")
    entry = registry.add(blob_model)
    first = registry.evaluate(entry["id"], dataset, device="cpu")
    assert not first["cached"] and first["registry_id"] == "v1"
    again = Registry(registry.path).evaluate("v1", dataset, device="cpu")
    assert again["cached"] and again["mean"] == first["mean"]
    assert not registry.evaluate("v1", dataset, device="cpu", min_lesion_ml=0.1)["cached"]
    summary = registry.get("v1")["evaluations"][0]
    assert summary["mean_dice"] == pytest.approx(first["mean"]["dice"]) and (registry.path / summary["file"]).is_file()

    # The same folder with a changed label is other data: evaluated again, not served from the cache.
    (dataset / "labelsTr" / "blob_052.nii.gz").write_bytes((dataset / "labelsTr" / "blob_051.nii.gz").read_bytes())
    changed = registry.evaluate("v1", dataset, device="cpu")
    assert not changed["cached"] and changed["dataset"]["fingerprint"] != first["dataset"]["fingerprint"]

    # Weights edited behind the registry's back are refused, not evaluated under the old identity.
    weights = Path(entry["path"]) / WEIGHTS_FILE
    weights.chmod(0o644)
    with open(weights, "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelError, match="modified after registration"):
        registry.evaluate("v1", dataset, device="cpu", refresh=True)


def test_cli_promote_reports_both_and_exits_3_when_refused(blob_model, random_model, eval_dataset, tmp_path):
    path = tmp_path / "registry"
    Registry(path).add(blob_model)
    added = run_cli("models", "add", random_model, "--registry", path)
    assert added.returncode == 0 and added.stdout.startswith("added v2")

    dry = run_cli("models", "promote", "v2", "--dataset", eval_dataset, "--registry", path, "--device", "cpu", "--dry-run", "--json")
    assert dry.returncode == 3, dry.stderr
    comparison = json.loads(dry.stdout)
    assert not comparison["at_least_as_good"] and comparison["candidate"]["dice"] < comparison["active"]["dice"]
    assert [e["event"] for e in Registry(path).history()] == ["activate"]  # a dry run changes nothing

    result = run_cli("models", "promote", "v2", "--dataset", eval_dataset, "--registry", path, "--device", "cpu")
    assert result.returncode == 3, result.stderr
    candidate = next(line for line in result.stdout.splitlines() if line.strip().startswith("candidate"))
    active = next(line for line in result.stdout.splitlines() if line.strip().startswith("active"))
    assert "v2" in candidate and "v1" in active and "mean Dice" in candidate and "mean Dice" in active
    assert "v2 not promoted" in result.stdout

    forced = run_cli("models", "promote", "v2", "--dataset", eval_dataset, "--registry", path, "--force", "--reason", "second opinion")
    assert forced.returncode == 0 and "promoted by force" in forced.stdout and forced.stdout.count("(cached)") == 2
    history = run_cli("models", "history", "--registry", path)
    assert history.returncode == 0
    events = [line.split()[1] for line in history.stdout.splitlines()[1:]]
    assert events == ["activate", "refused", "promote"] and "second opinion" in history.stdout
    rolled = run_cli("models", "rollback", "--registry", path)
    assert rolled.returncode == 0 and "active model: v1 (was v2)" in rolled.stdout


def test_concurrent_writers_lose_nothing(blob_model, random_model, tmp_path):
    path = tmp_path / "registry"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    # Two processes adding at once: both versions land, with distinct ids, and only one becomes active.
    adders = [
        subprocess.Popen([sys.executable, "-m", "SegmentLesionLib", "models", "add", str(model), "--registry", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for model in (blob_model, random_model)
    ]  # fmt: skip
    for process in adders:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    registry = Registry(path)
    assert sorted(e["sha256"] for e in registry.entries()) == sorted(sha256_file(m / WEIGHTS_FILE) for m in (blob_model, random_model))
    assert sorted(e["id"] for e in registry.entries()) == ["v1", "v2"]
    assert [e["event"] for e in registry.history()] == ["activate"]

    # Many read-modify-write updates from several processes at once: without the lock some would be lost.
    script = textwrap.dedent(
        f"""
        from SegmentLesionLib.learning.registry import Registry
        registry = Registry({str(path)!r})
        for _ in range(40):
            with registry.transaction() as index:
                index["counter"] = index.get("counter", 0) + 1
        """
    )
    workers = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for process in workers:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    index = json.loads((path / "registry.json").read_text())
    assert index["counter"] == 120 and len(index["models"]) == 2


def test_corrupt_index_and_wrong_folders_are_reported(blob_model, tmp_path):
    path = tmp_path / "registry"
    Registry(path).add(blob_model)
    index = path / "registry.json"
    good = index.read_text()
    index.write_text(good[: len(good) // 2])
    with pytest.raises(InputError, match="registry index is corrupt"):
        Registry(path).entries()
    result = run_cli("models", "list", "--registry", path)
    assert result.returncode == 1 and result.stderr.startswith("error:") and "corrupt" in result.stderr
    assert "Traceback" not in result.stderr and str(index) in result.stderr

    data = json.loads(good)
    data["active"] = "v7"
    index.write_text(json.dumps(data))
    with pytest.raises(InputError, match="active model 'v7' is not in 'models'"):
        Registry(path).active()

    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="is not a model registry"):
        Registry(stranger)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        Registry(tmp_path / "file")


def test_seed_and_default_location(blob_model, random_model, tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "from-env"))
    assert default_registry_path() == tmp_path / "from-env"
    registry = Registry()
    assert registry.path == tmp_path / "from-env"
    seeded = registry.seed(blob_model)
    assert seeded["id"] == "v1" and seeded["active"]
    assert registry.seed(random_model)["id"] == "v1" and len(registry.entries()) == 1  # only an empty registry is seeded
    monkeypatch.delenv(REGISTRY_ENV)
    assert default_registry_path() == Path.home() / ".segment-lesion" / "registry"
    with pytest.raises(ModelError):
        Registry(tmp_path / "other").add(tmp_path / "no-such-model")
