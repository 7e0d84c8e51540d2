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
from conftest import make_model, run_cli, write_blob_dataset
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.files import sha256_file
from SegmentLesionLib.learning.comparison import Comparison, Decision
from SegmentLesionLib.learning.registry import REGISTRY_ENV, Registry, default_registry_path
from SegmentLesionLib.learning.registry_index import RegistryIndex
from SegmentLesionLib.models.spec import WEIGHTS_FILE

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "SegmentLesion"


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
    assert first.id == "v1" and registry.active() == first  # the first version of an empty registry is active
    assert first.sha256 == sha256_file(blob_model / WEIGHTS_FILE)
    assert (first.name, first.version, first.parent_id, first.parent) == ("BlobTestModel", "0.0.1", None, None)
    copied = registry.folder(first)
    assert copied == (path / "models" / "v1").resolve() and folder_digest(copied) == source_before
    assert folder_digest(blob_model) == source_before
    assert (copied / WEIGHTS_FILE).stat().st_mode & 0o222 == 0  # registered folders are not edited in place

    second = registry.add(random_model)
    assert second.id == "v2" and registry.active().id == "v1"
    with pytest.raises(InputError, match="registered already as v1"):
        registry.add(blob_model)

    # A model fine-tuned from v1 names its parent's sha256 in its training metadata: the link is found.
    child = make_model(
        tmp_path / "child", seed=7, training={"parent": {"name": "BlobTestModel", "version": "0.0.1", "sha256": first.sha256}, "dataset": "Dataset009_Corrected", "cases": 6}
    )  # fmt: skip
    third = registry.add(child)
    assert (third.parent_id, third.parent_sha256) == ("v1", first.sha256)
    assert (third.source.dataset, third.source.cases, third.source.added_from) == ("Dataset009_Corrected", 6, "child")
    fourth = registry.add(make_model(tmp_path / "other", seed=8), parent="v2")
    assert (fourth.parent_id, fourth.parent_sha256) == ("v2", second.sha256)

    reloaded = Registry(path)
    assert reloaded.entries() == [first, second, third, fourth]  # the index reads back exactly what was added
    assert reloaded.active() == first and reloaded.model_dir("active") == copied
    assert reloaded.get(first.sha256[:10]) == first and reloaded.get("active") == first
    assert [(e.event, e.id, e.from_id) for e in reloaded.history()] == [("activate", "v1", None)]
    assert not [p for p in (path / "models").iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(InputError, match="no model version 'v9'"):
        reloaded.get("v9")

    listing = run_cli("models", "list", "--registry", path)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert ["*", "v1", "BlobTestModel", "0.0.1", first.sha256[:12]] == next(r for r in rows if "v1" in r)[:5]
    assert next(r for r in rows if r[0] == "v3")[3:5] == [third.sha256[:12], "v1"]  # no active mark: one column less
    assert run_cli("models", "path", "--registry", path).stdout.strip() == str(copied)
    added = run_cli("models", "add", make_model(tmp_path / "fifth", seed=10), "--registry", path, "--json")
    assert added.returncode == 0, added.stderr
    fifth = Registry(path).get("v5")
    assert json.loads(added.stdout) == {**fifth.to_json(), "path": str(Registry(path).folder(fifth)), "active": False}


def test_promote_refused_when_worse_forced_with_reason_then_rollback(blob_model, random_model, eval_dataset, tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.add(blob_model)
    candidate = registry.add(random_model)
    folders_before = {e.id: folder_digest(registry.folder(e)) for e in registry.entries()}

    decision = registry.promote(candidate.id, eval_dataset, device="cpu")
    assert not decision.promoted and not decision.forced and decision.previous_active == "v1"
    comparison = decision.comparison
    assert comparison.candidate.dice < comparison.active.dice  # both reported
    assert comparison.active.id == "v1" and comparison.dataset.case_ids == ("blob_011", "blob_012", "blob_013")
    assert (
        decision.message
        == f"v2 not promoted: mean Dice {comparison.candidate.dice:.4f} < {comparison.active.dice:.4f} of v1, the active model"
    )
    assert registry.active().id == "v1"
    refused = registry.history()[-1]
    assert (refused.event, refused.id, refused.from_id, refused.forced) == ("refused", "v2", "v1", False)
    assert (refused.scores.candidate_dice, refused.scores.active_dice) == (comparison.candidate.dice, comparison.active.dice)
    assert (refused.scores.dataset, refused.scores.cases, refused.scores.fingerprint) == (
        "Dataset002_Eval",
        3,
        comparison.dataset.fingerprint,
    )

    with pytest.raises(InputError, match="--force needs a --reason"):
        registry.promote(candidate.id, eval_dataset, force=True)
    forced = registry.promote(candidate.id, eval_dataset, force=True, reason="testing the override", device="cpu")
    assert forced.promoted and forced.forced and forced.reason == "testing the override"
    assert forced.comparison.candidate.cached and forced.comparison.active.cached  # same weights, same data: not evaluated again
    assert (forced.comparison.candidate.dice, forced.comparison.active.dice) == (comparison.candidate.dice, comparison.active.dice)
    assert registry.active().id == "v2"
    assert (registry.history()[-1].event, registry.history()[-1].reason) == ("promote", "testing the override")

    event = registry.rollback(reason="worse on the evaluation set")
    assert (event.event, event.id, event.from_id, event.reason) == ("rollback", "v1", "v2", "worse on the evaluation set")
    assert Registry(registry.path).active().id == "v1"
    assert registry.rollback("v2").id == "v2"  # any earlier active version
    assert registry.rollback("v1").id == "v1"
    never = registry.add(make_model(tmp_path / "never", seed=9))
    with pytest.raises(InputError, match="was never the active model"):
        registry.rollback(never.id)
    with pytest.raises(InputError, match="active model already"):
        registry.rollback("v1")
    assert [e.event for e in registry.history()] == ["activate", "refused", "promote", "rollback", "rollback", "rollback"]
    # Rollback moves the pointer only: no registered folder changed.
    assert {e.id: folder_digest(registry.folder(e)) for e in registry.entries() if e.id in folders_before} == folders_before


def test_promote_accepted_when_better_or_equal(blob_model, random_model, blind_models, eval_dataset, tmp_path):
    registry = Registry(tmp_path / "better")
    registry.add(random_model)
    better = registry.add(blob_model)
    comparison = registry.compare(better.id, eval_dataset, device="cpu")  # what the panel shows before promoting
    assert comparison.at_least_as_good and registry.active().id == "v1" and len(registry.history()) == 1
    assert Comparison.from_json(json.loads(json.dumps(comparison.to_json()))) == comparison
    decision = registry.promote(better.id, eval_dataset, device="cpu")
    assert decision.comparison.candidate.cached and decision.comparison.active.cached
    assert decision.promoted and not decision.forced
    assert decision.comparison.candidate.dice > decision.comparison.active.dice + 0.3
    assert registry.active().id == better.id
    assert Decision.from_json(json.loads(json.dumps(decision.to_json()))) == decision
    again = registry.promote(better.id, eval_dataset)
    assert again.comparison.already_active and not again.promoted and again.message == "v2 is the active model already"
    assert len(registry.history()) == 2  # promoting the active model again records nothing

    tie = Registry(tmp_path / "tie")
    tie.add(blind_models[0])
    second = tie.add(blind_models[1])
    decision = tie.promote(second.id, eval_dataset, device="cpu")
    assert decision.comparison.candidate.dice == decision.comparison.active.dice == 0.0
    assert decision.promoted and tie.active().id == second.id


def test_evaluation_cache_is_keyed_by_weights_and_data(blob_model, tmp_path):
    dataset = write_blob_dataset(tmp_path / "Dataset003_Changing", seeds=(51, 52))
    registry = Registry(tmp_path / "registry")
    entry = registry.add(blob_model)
    first = registry.evaluate(entry.id, dataset, device="cpu")
    assert not first.cached and first.registry_id == "v1"
    again = Registry(registry.path).evaluate("v1", dataset, device="cpu")
    assert again.cached and again.result == first.result  # the whole stored result, not only its mean
    assert not registry.evaluate("v1", dataset, device="cpu", min_lesion_ml=0.1).cached
    summary = registry.get("v1").evaluations[0]
    assert (summary.mean_dice, summary.cases, summary.skipped, summary.dataset) == (first.result.mean.dice, 2, 0, "Dataset003_Changing")
    assert json.loads((registry.path / summary.file).read_text()) == first.result.to_json()

    # The same folder with a changed label is other data: evaluated again, not served from the cache.
    (dataset / "labelsTr" / "blob_052.nii.gz").write_bytes((dataset / "labelsTr" / "blob_051.nii.gz").read_bytes())
    changed = registry.evaluate("v1", dataset, device="cpu")
    assert not changed.cached and changed.result.dataset.fingerprint != first.result.dataset.fingerprint

    # A damaged cached file is evaluated again (with a warning), never fatal.
    (registry.path / registry.get("v1").evaluations[-1].file).write_text("{")
    assert not registry.evaluate("v1", dataset, device="cpu").cached

    # Weights edited behind the registry's back are refused, not evaluated under the old identity.
    weights = registry.folder(entry) / WEIGHTS_FILE
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
    assert comparison["message"] == "dry run: v2 is worse than the active model; nothing changed"
    assert [e.event for e in Registry(path).history()] == ["activate"]  # a dry run changes nothing
    # `models compare` is the same operation: the same comparison (now from the cache), its own wording and exit code.
    compared = run_cli("models", "compare", "v2", "--dataset", eval_dataset, "--registry", path, "--device", "cpu", "--json")
    assert compared.returncode == 0, compared.stderr
    cached = {role: {**comparison[role], "cached": True} for role in ("candidate", "active")}
    assert json.loads(compared.stdout) == {**comparison, **cached, "message": "v2 is worse than the active model"}

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

    # The index on disk keeps its shape (key order included) and reads back into the same records.
    raw = json.loads((path / "registry.json").read_text())
    assert list(raw) == ["format", "format_version", "active", "models", "history"]
    assert (raw["format"], raw["format_version"], raw["active"]) == ("segment-lesion-model-registry", 1, "v1")
    entry = raw["models"][1]
    assert list(entry) == [
        "id",
        "name",
        "version",
        "sha256",
        "folder",
        "created",
        "parent_id",
        "parent_sha256",
        "parent",
        "source",
        "evaluations",
    ]
    assert (entry["id"], entry["folder"], entry["parent"], entry["source"]["added_from"]) == ("v2", "models/v2", None, "random")
    assert list(entry["source"]) == ["added_from", "dataset", "cases", "init", "seed", "validation_dice"]
    summary = entry["evaluations"][0]
    assert list(summary) == ["key", "dataset", "fingerprint", "min_lesion_ml", "cases", "skipped", "mean_dice", "lesion_sensitivity", "false_positive_lesions_per_case", "created", "file"]  # fmt: skip
    assert (summary["dataset"], summary["cases"], summary["skipped"], summary["min_lesion_ml"]) == ("Dataset002_Eval", 3, 0, 0.0)
    assert summary["mean_dice"] == comparison["candidate"]["dice"]  # all three cases compared: the same mean
    short = ["event", "id", "from", "created", "reason"]
    scored = ["event", "id", "from", "created", "forced", "reason", "dataset", "fingerprint", "cases", "dice", "min_lesion_ml"]
    assert [list(event) for event in raw["history"]] == [short, scored, scored, short]
    refused = raw["history"][1]
    assert (refused["event"], refused["id"], refused["from"], refused["forced"], refused["cases"]) == ("refused", "v2", "v1", False, 3)
    assert refused["dice"] == {"candidate": comparison["candidate"]["dice"], "active": comparison["active"]["dice"]}
    assert raw["history"][2]["forced"] and raw["history"][2]["reason"] == "second opinion"
    assert RegistryIndex.from_json(raw).to_json() == raw


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
    assert sorted(e.sha256 for e in registry.entries()) == sorted(sha256_file(m / WEIGHTS_FILE) for m in (blob_model, random_model))
    assert sorted(e.id for e in registry.entries()) == ["v1", "v2"]
    assert [e.event for e in registry.history()] == ["activate"]

    # Many read-modify-write updates (each appends one history event) from several processes: without the lock
    # some would be lost. The workers start while this process holds the lock, so all of them wait on it
    # whatever the speed of the machine, and nothing is written until it is released.
    script = textwrap.dedent(
        f"""
        import sys
        from SegmentLesionLib.io.files import utc_timestamp
        from SegmentLesionLib.learning.registry import Registry
        from SegmentLesionLib.learning.registry_index import HistoryEvent
        registry = Registry({str(path)!r})
        print("ready", flush=True)
        for n in range(40):
            with registry.store.transaction() as index:
                index.history.append(HistoryEvent("activate", "v1", None, utc_timestamp(), reason=f"{{sys.argv[1]}}-{{n}}"))
        """
    )
    before = (path / "registry.json").read_bytes()
    with registry.store.transaction():
        workers = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(3)]  # fmt: skip
        for process in workers:
            assert process.stdout.readline() == "ready\n", process.stderr.read()
        assert (path / "registry.json").read_bytes() == before  # every worker is waiting for the lock
    for process in workers:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    history = Registry(path).history()
    assert sorted(event.reason for event in history[1:]) == sorted(f"{w}-{n}" for w in range(3) for n in range(40))
    assert [e.id for e in Registry(path).entries()] == ["v1", "v2"]


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
    # What the typed records refuse, each named in the one message.
    good_index = json.loads(good)
    broken = [
        ({**good_index, "format_version": 2}, "format_version 2 is not supported"),
        ({**good_index, "models": good_index["models"] * 2}, "model ids are not unique"),
        ({**good_index, "models": [{"id": "v1", "folder": "models/v1"}]}, "models\\[0\\] needs 'sha256'"),
        ({**good_index, "history": [{"event": "deleted", "id": "v1"}]}, "unknown event 'deleted'"),
        ({**good_index, "format": "something else"}, "'format' is not"),
    ]
    for data, message in broken:
        index.write_text(json.dumps(data))
        with pytest.raises(InputError, match=f"registry index is corrupt .*{message}"):
            Registry(path).entries()

    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="is not a model registry"):
        Registry(stranger)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        Registry(tmp_path / "file")


def test_default_location_and_a_bad_model_folder(blob_model, tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "from-env"))
    assert default_registry_path() == tmp_path / "from-env"
    registry = Registry()
    assert registry.path == tmp_path / "from-env"
    entry = registry.add(blob_model)
    assert registry.folder(entry) == (tmp_path / "from-env" / "models" / "v1").resolve()
    monkeypatch.delenv(REGISTRY_ENV)
    assert default_registry_path() == Path.home() / ".segment-lesion" / "registry"
    with pytest.raises(ModelError):
        Registry(tmp_path / "other").add(tmp_path / "no-such-model")
    assert not (tmp_path / "other" / "registry.json").exists()
