"""The default model's training recipe (``benchmarks/train_default_model.py``): how it chains its stages, when it
skips or continues one, and the argument combinations it refuses.

The stages run the real ``segment-lesion train`` in a subprocess, on a tiny network and the small sphere dataset of
``test_training.py``; only the recipe's network size and iterations are made small here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from SegmentLesionLib.models.spec import load_spec
from test_training import write_dataset

ROOT = Path(__file__).resolve().parent.parent


def _load_recipe(name: str = "train_default_model"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a recipe's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


@pytest.fixture()
def tiny_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's own stage arguments, with epochs small enough for a test (the network: ``--channels``)."""
    tiny = list(recipe.TRAIN_ARGS)
    tiny[tiny.index("--patch-size") + 1] = "16"
    run = list(recipe.RUN_ARGS)
    run[run.index("--iterations-per-epoch") + 1] = "3"
    run[run.index("--val-interval") + 1] = "1"
    monkeypatch.setattr(recipe, "TRAIN_ARGS", tiny)
    monkeypatch.setattr(recipe, "RUN_ARGS", run)


def _args(**stages: int) -> argparse.Namespace:
    values = {"cases": 5, "epochs": 1, "minutes": 5.0, "patch_size": None, "channels": [4, 8, 16]}
    for number in (2, 3, 4):
        values[f"stage{number}_epochs"] = stages.get(f"stage{number}", 0)
        values[f"stage{number}_minutes"] = 5.0
    return argparse.Namespace(**values)


def test_enabled_stages_chain_and_a_rerun_skips_the_finished_ones(tmp_path: Path, tiny_recipe: None) -> None:
    """Stage 2 off, stage 3 on: stage 3 fine-tunes stage 1 (the case that once looked for a missing stage-2 model)."""
    data = write_dataset(tmp_path / "Dataset001_Spheres")
    model = tmp_path / "Model"
    recipe.train(_args(stage3=1), data, model)
    stage1 = tmp_path / "Model_stage1"
    assert recipe._has_model(stage1) and recipe._has_model(model)
    assert not (tmp_path / "Model_stage2").exists() and not (tmp_path / "Model_stage3").exists()
    first, last = load_spec(stage1), load_spec(model)
    assert first.training["init"] == "scratch" and first.network_def["channels"] == [4, 8, 16]  # --channels
    assert last.training["init"] == "fine-tune" and last.training["parent"]["sha256"] == first.weights_sha256
    assert last.training["learning_rate"] == pytest.approx(5e-4)  # stage 3's own learning rate
    weights = {folder: (folder / "models" / "model.pt").stat().st_mtime_ns for folder in (stage1, model)}
    recipe.train(_args(stage3=1), data, model)  # everything done: nothing runs again
    assert {folder: (folder / "models" / "model.pt").stat().st_mtime_ns for folder in weights} == weights


def test_a_time_capped_stage_continues_only_with_its_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "Model_stage2"
    assert recipe._to_do(folder)  # no model yet
    (folder / "configs").mkdir(parents=True)
    metadata = {"segment_lesion": {"training": {"stopped": "max_epochs"}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert not recipe._to_do(folder)
    metadata["segment_lesion"]["training"]["stopped"] = "max_minutes"
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert not recipe._to_do(folder)  # capped, but its checkpoint is gone: the stage counts as done
    Path(f"{folder}.checkpoint").mkdir()
    assert recipe._to_do(folder)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "stage 1 (from scratch) needs --epochs >= 1"),
        (["--leave-out", "colin27"], "with --leave-out colin27 pass --stage4-epochs 0"),
    ],
)
def test_refused_combinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, argv: list[str], message: str) -> None:
    monkeypatch.setattr(sys, "argv", ["train_default_model.py", "--work", str(tmp_path / "w"), *argv])
    with pytest.raises(SystemExit) as exit_info:
        recipe.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything is fetched or written


def test_the_refinement_recipe_starts_as_the_segmentation_model_it_is_given(tmp_path: Path) -> None:
    import torch
    from conftest import make_model
    from SegmentLesionLib.models.network import build_network, load_model

    refine_recipe = _load_recipe("train_refine_model")
    model = make_model(tmp_path / "segmentation", spacing=[1.5] * 3, patch_size=[16] * 3)
    chosen = refine_recipe.segmentation_recipe(model)
    assert chosen.network["in_channels"] == 4 and chosen.spacing == 1.5 and chosen.inference_crop == chosen.train_crop == 16
    assert chosen.patch == 24 and chosen.parent["name"] == "TinyTestModel" and chosen.settings().crop_size == (16, 16, 16)
    network = build_network(chosen.network)
    assert refine_recipe.transfer_weights(network, model) == len(network.state_dict())
    _, segmenter = load_model(model, torch.device("cpu"))
    network.eval()
    torch.manual_seed(1)
    image, extra = torch.randn(1, 1, 16, 16, 16), torch.rand(1, 3, 16, 16, 16)
    with torch.no_grad():
        # The mask and click channels start with zero weights: the network is the segmenter, whatever they hold.
        assert torch.allclose(network(torch.cat([image, extra], 1)), segmenter(image), atol=1e-5)
    two = make_model(tmp_path / "two", spacing=[1.5] * 3, in_channels=2)
    with pytest.raises(SystemExit, match="one-channel, two-class"):
        refine_recipe.segmentation_recipe(two)
    anisotropic = make_model(tmp_path / "anisotropic", spacing=[1.0, 1.0, 3.0])
    with pytest.raises(SystemExit, match="isotropic spacing"):
        refine_recipe.segmentation_recipe(anisotropic)
