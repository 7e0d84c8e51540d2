"""The recipe of the click-refinement model (SegmentLesionRefine), rerunnable with a fixed seed (42) and resumable.

Steps (each the project's own code):
  0. fetch the anatomy (Testing/data_sources.py, sha256-checked): Colin27 + AAL (Debian mricron-data). The ROBEX atlas
     is left out (benchmarks/bench_refine.py evaluates on it) and MNI152 is never used for training;
  1. generate cases with the project's randomised generator (``data.synthetic.generate_randomised_case``, seeds
     1..N, anatomy colin27: SynthSeg-style random contrast, deformation, resolution and slices, field of view, bias,
     noise, lesions and unlabelled hard negatives), put each on the model grid (RAS, 1.25 mm) and cut a patch around
     each lesion and one around a brain voxel (``data.synthetic.refine_samples.case_patches``); cached per seed;
  2. train a MONAI UNet (inputs: image, current mask, positive and negative click maps) on simulated
     corrections (``data.synthetic.corrections``: missed lesions, eroded or cut masks, leaks into a half-space,
     over-segmentation, separate false blobs, rounds without a click; the click at the deepest point of the largest
     error region), and in some batches 1-2 more rounds that feed the network's own prediction back as the current
     mask with a new click on what is still wrong; time-capped, checkpointed every few minutes (rerun to resume);
  3. write the model folder (``models.network.save_model``: a MONAI bundle with an ``interaction`` block) with its
     model card; ``--install`` copies it to SegmentLesion/Resources/Models/SegmentLesionRefine.

The network: by default a small UNet from scratch at 1.25 mm on 48^3 crops (SegmentLesionRefine 1.0.0); with
``--from-segmentation MODEL`` the segmentation model's own network, spacing and patch size, started from its weights
with the three new input channels at zero (it starts as that segmenter and learns what the mask and clicks add;
SegmentLesionRefine 2.0.0 starts from the bundled SegmentLesionBrainMR 2.0.0, itself trained without ROBEX).

The bundled SegmentLesionRefine 2.0.0 (40 minutes, one thread):
    PYTHONPATH=$PWD/SegmentLesion python benchmarks/train_refine_model.py --work build/refine-model --cases 120 \\
        --minutes 40 --threads 1 --lr 1e-3 --from-segmentation SegmentLesion/Resources/Models/SegmentLesionBrainMR \\
        --version 2.0.0 --add-passes 3 --install
(with SegmentLesionBrainMR 2.0.0 there: a later default model trained on ROBEX would make the benchmark's ROBEX
cases seen). 1.0.0 was ``--cases 120 --minutes 85 --install`` at nice 5 on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))
sys.path.insert(0, str(ROOT / "Testing"))

import data_sources  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from SegmentLesionLib.data import synthetic  # noqa: E402
from SegmentLesionLib.data.synthetic import corrections  # noqa: E402
from SegmentLesionLib.data.synthetic.refine_samples import Patch, case_patches, training_sample  # noqa: E402
from SegmentLesionLib.engine.refine_inputs import RefineSettings, network_input  # noqa: E402
from SegmentLesionLib.io.files import atomic_path, sha256_file, write_json  # noqa: E402
from SegmentLesionLib.models.network import build_network, save_model  # noqa: E402
from SegmentLesionLib.models.spec import CLICK_REFINEMENT, LabelInfo, ModelSpec  # noqa: E402

MODEL_NAME = "SegmentLesionRefine"
MODEL_VERSION = "1.0.0"
SEED = 42
SPACING = 1.25
TRAIN_CROP = 48
INFERENCE_CROP = 48
PATCH = 80
CLICK_RADIUS_MM = 3.0
KEEP_FRACTION = 0.1
ADD_PASSES = 1  # network passes per positive click (engine.refine); --add-passes, chosen on Colin27 cases, not the benchmark's
NETWORK = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 2,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": "instance",
}
ANATOMY = "colin27"  # ROBEX is the held-out anatomy of benchmarks/bench_refine.py
BATCH = 4
LEARNING_RATE = 2e-3
MORE_ROUNDS = (0.35, 0.12)  # probability of a 2nd round, of a 3rd round
CHECKPOINT_MINUTES = 4.0


@dataclass(frozen=True)
class Recipe:
    """The network and its geometry: the small network from scratch (1.0.0), or a segmentation model's network
    with the mask and click channels added (``--from-segmentation``)."""

    network: dict = field(default_factory=lambda: dict(NETWORK))
    spacing: float = SPACING
    train_crop: int = TRAIN_CROP
    inference_crop: int = INFERENCE_CROP
    patch: int = PATCH
    batch: int = BATCH
    parent: dict | None = None  # the segmentation model whose weights start the training, as its metadata records it
    parent_folder: Path | None = None  # that model's folder (this run only)

    def settings(self) -> RefineSettings:
        return RefineSettings((self.spacing,) * 3, (self.inference_crop,) * 3, CLICK_RADIUS_MM, 1, 0.5, KEEP_FRACTION)


def segmentation_recipe(model_dir: Path) -> Recipe:
    """A segmentation model's network (one image channel in, lesion/background out) with three input channels more,
    at the model's own spacing and patch size (its features are those of that scale); the patches cached around
    each lesion grow by half a crop so the crop can move around the click."""
    from SegmentLesionLib.models.spec import load_spec

    spec = load_spec(model_dir)
    network = dict(spec.network_def)
    if network.get("in_channels") != 1 or network.get("out_channels") != 2 or len(set(spec.spacing)) != 1 or len(set(spec.patch_size)) != 1:
        raise SystemExit(f"{model_dir}: a one-channel, two-class model with isotropic spacing and a cubic patch is needed")
    network["in_channels"] = 4
    crop = int(spec.patch_size[0])
    parent = {
        "name": spec.name,
        "version": spec.version,
        "weights_sha256": sha256_file(model_dir / "models" / "model.pt"),
        "network": "its weights; the first layer's new input channels start at 0",
    }
    return Recipe(network, float(spec.spacing[0]), crop, crop, crop + crop // 2, 2, parent, model_dir)


def transfer_weights(network: torch.nn.Module, model_dir: Path) -> int:
    """Load a one-channel segmentation model's weights into ``network`` (same layers, more input channels): a weight
    whose input-channel dimension is larger keeps the model's weights for channel 0 and zeros for the others, so the
    network starts as the segmentation model and learns what the mask and the clicks add. Returns the tensors copied.

    Raises:
        SystemExit: a tensor that is neither the same shape nor the same but for its input channels.
    """
    source = torch.load(model_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    own = network.state_dict()
    if set(source) != set(own):
        raise SystemExit(f"{model_dir}: its layers are not those of the refinement network")
    for name, tensor in source.items():
        target = own[name]
        if target.shape == tensor.shape:
            target.copy_(tensor)
        elif target.dim() == tensor.dim() >= 2 and target.shape[0] == tensor.shape[0] and target.shape[2:] == tensor.shape[2:]:
            target.zero_()
            target[:, : tensor.shape[1]] = tensor
        else:
            raise SystemExit(f"{model_dir}: {name} is {tuple(tensor.shape)}, the refinement network's {tuple(target.shape)}")
    network.load_state_dict(own)
    return len(source)


# ------------------------------------------------------------------------------------------------ patches
def prepare_patches(work: Path, cases: int, recipe: Recipe) -> list[Patch]:
    """The patches of seeds 1..cases (each seed's file written once)."""
    os.environ[synthetic.COLIN27_DIR_ENV] = str(data_sources.colin27_dir())
    folder = work / "patches"
    folder.mkdir(parents=True, exist_ok=True)
    patches: list[Patch] = []
    start = time.perf_counter()
    for seed in range(1, cases + 1):
        path = folder / f"seed_{seed:05d}.npz"
        if not path.exists():
            case = synthetic.generate_randomised_case(seed, anatomy=ANATOMY, max_voxels=4e6)
            found = case_patches(case, recipe.settings(), recipe.patch, np.random.default_rng([SEED, seed]))
            empty = np.zeros((0,) + (recipe.patch,) * 3)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as stream:
                    np.savez_compressed(
                        stream,
                        image=np.stack([p.image for p in found]) if found else empty.astype(np.float16),
                        components=np.stack([p.components for p in found]) if found else empty.astype(np.uint8),
                        brain=np.stack([p.brain for p in found]) if found else empty.astype(bool),
                        lesion=np.array([p.lesion for p in found], dtype=int),
                    )
            print(f"seed {seed}: {len(found)} patches ({time.perf_counter() - start:.0f} s)", flush=True)
        with np.load(path) as data:  # each key is read (decompressed) once: every patch is a view into its arrays
            image, components, brain, lesion = (data[key] for key in ("image", "components", "brain", "lesion"))
        patches.extend(Patch(image[i], components[i], brain[i], int(lesion[i])) for i in range(len(lesion)))
    return patches


class Samples(torch.utils.data.IterableDataset):
    """An endless stream of simulated corrections (one stream per loader worker, seeded from 42 and the start step)."""

    def __init__(self, patches: list[Patch], first_step: int, recipe: Recipe) -> None:
        self.patches = patches
        self.recipe = recipe
        self.first_step = first_step
        self.with_lesion = [i for i, p in enumerate(patches) if p.lesion]
        self.without = [i for i, p in enumerate(patches) if not p.lesion]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([SEED, self.first_step, info.id if info else 0])
        while True:
            pool = self.without if (self.without and rng.random() < 0.15) else self.with_lesion
            patch = self.patches[pool[int(rng.integers(len(pool)))]]
            sample = training_sample(rng, patch, self.recipe.settings(), self.recipe.train_crop)
            yield torch.from_numpy(sample.inputs), torch.from_numpy(sample.target), torch.from_numpy(sample.weight)


# ------------------------------------------------------------------------------------------------ training
def cpu_seconds() -> float:
    """CPU time of this process and its live children (the sample loader), from /proc on Linux (else this process)."""
    import multiprocessing

    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def loss_function(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy (the voxels a correction changes weigh more) plus a soft Dice of the lesion class."""
    ce = torch.nn.functional.cross_entropy(logits, target.long(), reduction="none")
    ce = (ce * weight).sum() / weight.sum()
    probability = torch.softmax(logits, dim=1)[:, 1]
    truth = target.float()
    dice = 1.0 - (2.0 * (probability * truth).sum() + 1.0) / (probability.sum() + truth.sum() + 1.0)
    return ce + dice


def next_round(network: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, rng: np.random.Generator, spacing: float):
    """Feed the prediction back as the current mask, with one new click on the largest remaining error."""
    with torch.no_grad():
        network.eval()
        predicted = network(inputs).argmax(dim=1).numpy().astype(bool)
        network.train()
    radius = np.full(3, CLICK_RADIUS_MM / spacing)
    batch_inputs, weights = [], []
    for index in range(inputs.shape[0]):
        truth = target[index].numpy().astype(bool)
        mask = predicted[index]
        missing, extra = truth & ~mask, mask & ~truth
        positive = np.count_nonzero(corrections.largest_component(missing)) >= np.count_nonzero(corrections.largest_component(extra))
        click = corrections.error_click(missing if positive else extra, spacing)
        points = [] if click is None else [np.asarray(click) + rng.uniform(-0.5, 0.5, 3)]
        image = inputs[index, 0].numpy()
        batch_inputs.append(network_input(image, mask, points if positive else [], [] if positive else points, radius))
        weights.append(1.0 + 4.0 * (mask != truth).astype(np.float32))
    return torch.from_numpy(np.stack(batch_inputs)), torch.from_numpy(np.stack(weights))


def train(
    work: Path, patches: list[Patch], minutes: float, recipe: Recipe, init: Path | None = None, lr: float = LEARNING_RATE
) -> tuple[torch.nn.Module, dict]:
    """Train (from ``init``'s weights when given: a refinement model folder of the same network; else from the
    recipe's segmentation model when it has one) for ``minutes``."""
    torch.manual_seed(SEED)
    network = build_network(recipe.network)
    if not (work / "checkpoint.pt").exists():
        if init is not None:
            network.load_state_dict(torch.load(init / "models" / "model.pt", map_location="cpu", weights_only=True))
            print(f"fine-tuning {init}", flush=True)
        elif recipe.parent_folder is not None:
            copied = transfer_weights(network, recipe.parent_folder)
            print(f"starting from {recipe.parent['name']} {recipe.parent['version']} ({copied} tensors)", flush=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    checkpoint = work / "checkpoint.pt"
    step, elapsed, cpu_before, history = 0, 0.0, 0.0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        # Runs before CPU time was recorded: count their wall time as CPU time (an upper bound on one core... of two).
        cpu_before = float(state["cpu"]) if "cpu" in state else 2.0 * elapsed
        history = json.loads(str(state["history"]))
        print(f"resumed at step {step} ({elapsed / 60:.1f} min, {cpu_before / 60:.1f} CPU min)", flush=True)
    loader = torch.utils.data.DataLoader(Samples(patches, step, recipe), batch_size=recipe.batch, num_workers=1, persistent_workers=False)
    rng = np.random.default_rng([SEED, step, 99])
    network.train()
    budget = minutes * 60.0
    started = time.perf_counter() - elapsed
    saved = time.perf_counter()
    running = []
    cpu_start = cpu_seconds()

    peak = [cpu_before]

    def cpu_used() -> float:
        # Never less than already counted: the sample loader's time drops out of the sum once that process has ended
        # (a rerun that only rewrites the model folder counted 32 of a run's 40.8 CPU minutes before this).
        peak[0] = max(peak[0], cpu_before + cpu_seconds() - cpu_start)
        return peak[0]

    for inputs, target, weight in loader:
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            break
        for group in optimiser.param_groups:  # polynomial decay over the time budget
            group["lr"] = lr * max(1.0 - elapsed / budget, 0.02) ** 0.9
        rounds = 1 + int(rng.random() < MORE_ROUNDS[0]) + int(rng.random() < MORE_ROUNDS[1])
        for _ in range(rounds - 1):
            inputs, weight = next_round(network, inputs, target, rng, recipe.spacing)
        optimiser.zero_grad()
        loss = loss_function(network(inputs), target, weight)
        loss.backward()
        optimiser.step()
        running.append(float(loss.detach()))
        step += 1
        if step % 100 == 0:
            record = {"step": step, "minutes": round(elapsed / 60, 2), "cpu_minutes": round(cpu_used() / 60, 2)}
            history.append({**record, "loss": round(float(np.mean(running)), 5)})
            running = []
            print(f"step {step}: loss {history[-1]['loss']:.4f} ({elapsed / 60:.1f} min, {cpu_used() / 60:.1f} CPU min)", flush=True)
        if time.perf_counter() - saved > CHECKPOINT_MINUTES * 60:
            save_checkpoint(checkpoint, network, optimiser, step, elapsed, cpu_used(), history)
            saved = time.perf_counter()
    cpu = cpu_used()
    save_checkpoint(checkpoint, network, optimiser, step, min(elapsed, budget), cpu, history)
    summary = {
        "learning_rate": lr,
        "steps": step,
        "minutes": round(min(elapsed, budget) / 60, 2),
        "cpu_minutes": round(cpu / 60, 2),
        "history": history,
    }
    return network, summary


def save_checkpoint(path: Path, network, optimiser, step: int, elapsed: float, cpu: float, history: list) -> None:
    state = {
        "network": network.state_dict(),
        "optimiser": optimiser.state_dict(),
        "step": step,
        "elapsed": elapsed,
        "cpu": cpu,
        "history": json.dumps(history),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ------------------------------------------------------------------------------------------------ model folder
def model_spec(summary: dict, cases: int, patches: int, recipe: Recipe, add_passes: int = ADD_PASSES) -> ModelSpec:
    return ModelSpec(
        name=MODEL_NAME,
        version=summary.get("version", MODEL_VERSION),
        network_def=recipe.network,
        labels=[LabelInfo(1, "lesion", [0.94, 0.35, 0.20])],
        in_channels=4,
        out_channels=2,
        orientation="RAS",
        spacing=[recipe.spacing] * 3,
        intensity={"mode": "zscore", "foreground": "head"},
        patch_size=[recipe.inference_crop] * 3,
        threshold=0.5,
        min_lesion_mm3=0.0,
        fill_holes=False,
        modality="MR",
        description="Click-to-fix refinement of lesion masks: one click adds a missed lesion or removes a false one (research use only).",
        interaction={
            "kind": CLICK_REFINEMENT,
            "image_channels": 1,
            "click_radius_mm": CLICK_RADIUS_MM,
            "keep_fraction": KEEP_FRACTION,
            "add_passes": add_passes,
            "statistics": "head z-score of the whole image, applied to each crop",
        },
        training={
            "recipe": "benchmarks/train_refine_model.py",
            "seed": SEED,
            "anatomy": ANATOMY,
            "cases": cases,
            "patches": patches,
            "train_crop": recipe.train_crop,
            "patch": recipe.patch,
            "batch_size": recipe.batch,
            **({"initialised_from": recipe.parent} if recipe.parent else {}),
            "learning_rate": summary["learning_rate"],
            "scenarios": dict(zip(corrections.SCENARIOS, corrections.SCENARIO_WEIGHTS)),
            "more_rounds": list(MORE_ROUNDS),
            "device": "cpu",
            "threads": torch.get_num_threads(),
            **summary,
        },
    )


MODEL_CARD = """# SegmentLesionRefine {version}: model card

**Research use only. Not for clinical use.** This model has never seen a real lesion or a real correction: it is
trained on *synthetic* lesions in *real* anatomy (the Colin27 brain MRI), with *simulated* corrections.

## What it is
A 3D MONAI `UNet` (channels {channels}, strides {strides}, one residual unit, instance norm, {parameters:,}
parameters) that corrects a lesion mask where the user clicks. Input, a {crop}^3 crop at {spacing} mm in RAS
orientation centred on the click: the image (z-scored with the head statistics of the whole image), the current
mask, a positive and a negative click map (balls of {radius} mm). Output: lesion / background softmax in the crop.
The engine (`SegmentLesionLib/engine/refine.py`) applies it with rules of its own: a positive click adds the
predicted lesion under the click (or grows the lesion it is in, never duplicating it); a negative click removes
the lesion it is in, or trims it when the network keeps part of it (a leak); nothing else changes.

## Training data
Generated here (`benchmarks/train_refine_model.py`, seed {seed}): {cases} domain-randomised cases of the project's
generator (`SegmentLesionLib.data.synthetic`, SynthSeg-style random contrast per tissue, deformation, 0.4-1.2 mm
in-plane and 1-7 mm slices, field of view, bias, noise, 1-10 lesions of 0.02-60 mL and unlabelled hard negatives)
built from the **real Colin27 brain MRI** (Debian `mricron-data`, BSD-3); {patches} patches around lesions and
brain tissue. The ROBEX atlas is held out for the benchmark; MNI152 was not used. Corrections are simulated
(`SegmentLesionLib/data/synthetic/corrections.py`): missed lesions, eroded or cut masks, leaks into a half-space,
over-segmentation, separate false blobs, rounds without a click; the click at the deepest point of the largest error
region; in some batches 1-2 more rounds feed the network's prediction back as the current mask.

## Training
AdamW lr {lr}, weighted cross-entropy + Dice, batch {batch} of {train_crop}^3 crops, flips and intensity jitter,
{steps} steps in {minutes} minutes of wall time, {cpu_minutes} CPU minutes, {threads} torch threads.{lineage}

## Accuracy
See `python benchmarks/bench_refine.py` (held-out generated cases of the ROBEX anatomy) and the README's table.
These figures are on generated cases, not on real patients.
"""


def write_model(
    work: Path, network: torch.nn.Module, summary: dict, cases: int, patches: int, recipe: Recipe, add_passes: int = ADD_PASSES
) -> Path:
    spec = model_spec(summary, cases, patches, recipe, add_passes)
    parent = summary.get("parent")
    start = recipe.parent
    lineage = (
        f" Started from the weights of the segmentation model {start['name']} {start['version']} (weights sha256"
        f" {start['weights_sha256'][:12]}), its first layer extended to the mask and click channels with zero weights:"
        " the network starts as that segmenter and learns what the mask and the clicks add."
        if start
        else ""
    )
    lineage += (
        f" Fine-tuned from {parent['name']} {parent['version']} (its weights; the optimiser and the learning-rate decay"
        f" started anew), whose own training was {parent.get('steps', '?')} steps in {parent.get('minutes', '?')} minutes"
        " on a 2-core machine shared with other training runs (load average 6-15)."
        if parent
        else ""
    )
    card = MODEL_CARD.format(
        version=summary.get("version", MODEL_VERSION),
        lineage=lineage,
        parameters=sum(p.numel() for p in network.parameters()),
        channels="-".join(str(c) for c in recipe.network["channels"]),
        strides="-".join(str(c) for c in recipe.network["strides"]),
        crop=recipe.inference_crop,
        spacing=recipe.spacing,
        radius=CLICK_RADIUS_MM,
        seed=SEED,
        cases=cases,
        patches=patches,
        lr=summary["learning_rate"],
        batch=recipe.batch,
        train_crop=recipe.train_crop,
        steps=summary["steps"],
        minutes=summary["minutes"],
        cpu_minutes=summary.get("cpu_minutes", "?"),
        threads=torch.get_num_threads(),
    )
    return save_model(work / MODEL_NAME, spec, network, overwrite=True, model_card=card)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "refine-model")
    parser.add_argument("--cases", type=int, default=120, help="generated training cases (seeds 1..N)")
    parser.add_argument("--minutes", type=float, default=85.0, help="training wall-time cap (a shared 2-core machine: 85)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, help="fine-tune this refinement model folder (same network) instead of starting from scratch")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help=f"peak learning rate (default {LEARNING_RATE})")
    parser.add_argument("--version", default=MODEL_VERSION, help=f"the model's version (default {MODEL_VERSION})")
    parser.add_argument(
        "--add-passes",
        type=int,
        default=ADD_PASSES,
        choices=range(1, 9),
        metavar="N",
        help=f"network passes per positive click, written in the model's metadata (default {ADD_PASSES}; a rerun after "
        "training only rewrites the folder)",
    )
    parser.add_argument(
        "--from-segmentation",
        type=Path,
        metavar="MODEL",
        help="start from a one-channel segmentation model's network and weights, at its spacing and patch size "
        "(e.g. SegmentLesion/Resources/Models/SegmentLesionBrainMR), instead of the small network from scratch",
    )
    parser.add_argument("--install", action="store_true", help="copy the model folder into SegmentLesion/Resources/Models")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    recipe = segmentation_recipe(args.from_segmentation.resolve()) if args.from_segmentation else Recipe()
    patches = prepare_patches(args.work, args.cases, recipe)
    print(f"{len(patches)} patches", flush=True)
    network, summary = train(args.work, patches, args.minutes, recipe, args.init, args.lr)
    if args.init is not None:
        parent = json.loads((args.init / "configs" / "metadata.json").read_text())
        trained = parent.get("segment_lesion", {}).get("training", {})
        summary["parent"] = {"name": parent["name"], "version": parent["version"]}
        summary["parent"].update({key: trained[key] for key in ("learning_rate", "steps", "minutes") if key in trained})
    summary["version"] = args.version
    folder = write_model(args.work, network, summary, args.cases, len(patches), recipe, args.add_passes)
    write_json({key: summary[key] for key in ("steps", "minutes", "cpu_minutes")}, args.work / "summary.json")
    print(f"model written to {folder}", flush=True)
    if args.install:
        target = ROOT / "SegmentLesion" / "Resources" / "Models" / MODEL_NAME
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        print(f"installed {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
