"""Independent evaluation of a brain-lesion model on an anatomy training never touched: the MNI152 2009a template.

The bundled default model's training uses Colin27 and the ROBEX atlas only; MNI152 (from the nilearn wheel,
``Testing/data_sources.mni152_dir``) is RESERVED for this evaluation and must never be used to train or tune.

Lesions are inserted with exact masks by the project's own generator (``data/synthetic/lesions.py``,
``insert_lesions``) into the MNI152 T1, then presented five ways, each its own nnU-Net v2 raw dataset of N cases
(seeds 50001.., hyper- and hypo-intense lesions alternating, 1-4 lesions of 0.1-30 mL inside the brain mask):

    a  as stored       1 mm, the template's orientation, float, the template's own scale (0-255)
    b  skull-stripped  1 mm, brain mask applied, float rescaled to 0-1.4
    c  int16           1 mm, integers 0-4000
    d  thick 5 mm      1 x 1 x 5 mm axial slices, each the average over its 5 mm slab (partial volume)
    e  6.5 mm LPS      0.8 x 0.8 x 6.5 mm axial slices (slab average), stored LPS (another orientation)

The same seed gives the same lesions in every variant, so the variants differ only in how the scan is presented.
Every case also gets a mild bias field and Gaussian noise (the template is an average of 152 brains, noiseless).

Note: nilearn ships only the *skull-stripped* MNI152 T1 (no whole-head T1, no brain mask, no CSF map), so variant
(a) is the brain as nilearn stores it, not a whole head; the brain mask is nilearn's own rule (T1 / max > 0.2).

Adapter (data/synthetic is not edited): ``load_template`` reads a template folder holding ``ch2.nii.gz`` and
``ch2bet.nii.gz``; the MNI152 T1 and mask are copied into WORK/template under those names. ``insert_lesions``
draws volumes up to the module's ``MAX_LESION_ML`` (20 mL); it is raised to 30 mL while this script inserts.

Then ``python -m SegmentLesionLib evaluate`` scores the model on each dataset (``--min-lesion-ml 0.1``) and one
table is printed (variant, cases, mean Dice, lesion sensitivity, false-positive lesions per case, and lesions
found / true in the hyper- and in the hypo-intense cases) and written to WORK/summary.json. These are generated lesions in a real template, not clinical data.

    PYTHONPATH=$PWD/SegmentLesion python benchmarks/eval_independent.py \\
        --model SegmentLesion/Resources/Models/SegmentLesionBrainMR --work /work/eval-mni --cases 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegmentLesion"))
sys.path.insert(0, str(ROOT / "Testing"))

import data_sources  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402
from SegmentLesionLib.data import layout  # noqa: E402
from SegmentLesionLib.data.synthetic import lesions as lesion_module  # noqa: E402
from SegmentLesionLib.data.synthetic.acquisition import bias_field  # noqa: E402
from SegmentLesionLib.data.synthetic.geometry import streams  # noqa: E402
from SegmentLesionLib.data.synthetic.lesions import Canvas, insert_lesions  # noqa: E402
from SegmentLesionLib.data.synthetic.template import Template, load_template  # noqa: E402
from SegmentLesionLib.io.files import write_json  # noqa: E402
from SegmentLesionLib.io.volume import write_image  # noqa: E402

GENERATOR = "eval_independent/2"  # bump when the cases change, so cached datasets are rebuilt
FIRST_SEED = 50001
MIN_LESION_ML, MAX_LESION_ML = 0.1, 30.0
LESION_COUNTS, LESION_COUNT_P = (1, 2, 3, 4), (0.35, 0.3, 0.2, 0.15)
GAP_MM = 8.0  # between lesions: they stay apart even on 6.5 mm slices
NOISE_REL_WM = 0.02  # Gaussian noise, relative to white matter
BIAS_RANGE = (0.03, 0.15)
NOTE = "generated lesions inserted (exact masks) into a real template (MNI152 2009a), not clinical data"
CAVEATS = (
    "nilearn ships the MNI152 T1 skull-stripped only: no variant shows a whole head",
    "the brain mask is nilearn's rule (T1 / max > 0.2); the wheel holds no mask",
    "hyper / hypo columns: a model trained on hyperintense lesions only is expected to miss the hypo ones",
)
# LPS direction (ITK's identity), storage of variant e.
LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

VARIANTS: dict[str, dict[str, Any]] = {
    "a": {"dataset": "Dataset951_MNI152AsStored", "title": "as stored (brain only), 1 mm, float", "spacing": None},
    "b": {"dataset": "Dataset952_MNI152SkullStripped", "title": "skull-stripped, 1 mm, float 0-1.4", "spacing": None},
    "c": {"dataset": "Dataset953_MNI152Int16", "title": "1 mm, int16 0-4000", "spacing": None},
    "d": {"dataset": "Dataset954_MNI152Thick5", "title": "1x1x5 mm slab-averaged", "spacing": (1.0, 1.0, 5.0)},
    "e": {"dataset": "Dataset955_MNI152Thick6p5LPS", "title": "0.8x0.8x6.5 mm, LPS", "spacing": (0.8, 0.8, 6.5)},
}


# ---------------------------------------------------------------------------------------------------------------
# Lesions in the MNI152 template (the project's insertion code through a template folder)
# ---------------------------------------------------------------------------------------------------------------


def template_folder(work: Path) -> Path:
    """WORK/template: the MNI152 T1 and brain mask under the names ``load_template`` reads (ch2, ch2bet)."""
    source = data_sources.mni152_dir(work / "sources")
    folder = work / "template"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in ((data_sources.MNI152_T1, "ch2.nii.gz"), (data_sources.MNI152_MASK, "ch2bet.nii.gz")):
        if not (folder / target).is_file() or (folder / target).read_bytes() != (source / name).read_bytes():
            shutil.copyfile(source / name, folder / target)
    return folder


@contextlib.contextmanager
def max_lesion_ml(value: float) -> Iterator[None]:
    """Raise ``insert_lesions``'s largest drawn volume for the duration (the module reads it at each call)."""
    saved = lesion_module.MAX_LESION_ML
    lesion_module.MAX_LESION_ML = value
    try:
        yield
    finally:
        lesion_module.MAX_LESION_ML = saved


def lesion_case(template: Template, seed: int, polarity: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The template with lesions and a bias field (1 mm, its grid): ``(image, lesion fraction, what was drawn)``."""
    _geom, rng_lesion, rng_tissue, _noise, _crop = streams(seed)
    canvas = Canvas(
        image=template.t1.copy(),
        fraction=np.zeros(template.t1.shape, np.float32),
        occupied=np.zeros(template.t1.shape, bool),
        brain=template.brain,
        depth=template.depth,
        csf=template.csf,
    )
    count = int(rng_lesion.choice(LESION_COUNTS, p=LESION_COUNT_P))
    with max_lesion_ml(MAX_LESION_ML):
        drawn = insert_lesions(
            rng_lesion, canvas, template, n_lesions=count, polarity=polarity, min_volume_mm3=MIN_LESION_ML * 1000.0, gap_mm=GAP_MM
        )
    amplitude = float(rng_tissue.uniform(*BIAS_RANGE))
    image = canvas.image * bias_field(rng_tissue, canvas.image.shape, amplitude)
    info = {
        "seed": seed,
        "polarity": polarity,
        "bias_amplitude": amplitude,
        "lesions": [
            {"volume_ml": round(item.volume_ml, 4), "category": item.category, "contrast": round(item.contrast, 3)} for item in drawn
        ],
    }
    return image.astype(np.float32), canvas.fraction, info


# ---------------------------------------------------------------------------------------------------------------
# Presentations (variants)
# ---------------------------------------------------------------------------------------------------------------


def box_kernel(width: float) -> np.ndarray:
    """Weights of a slab ``width`` voxels thick over unit voxels centred on a voxel (fractional ends), summing to 1."""
    half = width / 2.0
    taps = np.arange(-int(np.ceil(half + 0.5)), int(np.ceil(half + 0.5)) + 1, dtype=float)
    weights = np.clip(np.minimum(taps + 0.5, half) - np.maximum(taps - 0.5, -half), 0.0, None)
    return weights[weights > 0] / width


def _on(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.CopyInformation(reference)
    return image


def thick_grid(reference: sitk.Image, spacing: tuple[float, float, float], direction: tuple[float, ...]) -> dict[str, Any]:
    """An output grid over the template's field of view, axial slices (the template's z axis) ``spacing[2]`` thick."""
    size_ref = np.array(reference.GetSize())
    corners = [reference.TransformIndexToPhysicalPoint([int(i * (n - 1)) for i, n in zip(c, size_ref)]) for c in np.ndindex(2, 2, 2)]
    matrix = np.array(direction).reshape(3, 3)
    local = np.array(corners) @ matrix  # corner coordinates along the output axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    spacing_arr = np.array(spacing)
    size = np.floor((hi - lo) / spacing_arr).astype(int) + 1
    offset = ((hi - lo) - (size - 1) * spacing_arr) / 2.0  # centred in the field of view...
    offset[2] = np.floor(offset[2])  # ...with slice centres on template voxels, so a 5 mm slab is 5 whole voxels
    start = lo + offset
    return {"size": [int(v) for v in size], "spacing": tuple(spacing), "direction": tuple(direction), "origin": tuple(matrix @ start)}


def slab_resample(reference: sitk.Image, array: np.ndarray, grid: dict[str, Any]) -> np.ndarray:
    """Average over each output slice's slab along the template z axis (box kernel), then sample onto the grid."""
    if abs(abs(np.array(grid["direction"]).reshape(3, 3)[2, 2]) - 1.0) > 1e-6:
        raise ValueError("the slice axis must be the template's z axis")
    width = grid["spacing"][2] / reference.GetSpacing()[2]
    filtered = ndimage.convolve1d(array, box_kernel(width), axis=0, mode="constant")
    resampled = sitk.Resample(
        _on(reference, filtered),
        grid["size"],
        sitk.Transform(),
        sitk.sitkLinear,
        grid["origin"],
        grid["spacing"],
        grid["direction"],
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def present(template: Template, image: np.ndarray, fraction: np.ndarray, variant: str, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """One variant of a case: ``(image, label)``, the label exact on the image grid (fraction >= 0.5)."""
    reference = template.reference
    spacing = VARIANTS[variant]["spacing"]
    support = (template.t1 > 0).astype(np.float32)  # the template is stored skull-stripped: background stays 0
    if spacing is None:
        like = reference
        arrays = [image, fraction, support]
    else:
        direction = LPS if variant == "e" else reference.GetDirection()
        grid = thick_grid(reference, spacing, direction)
        like = sitk.Image(grid["size"], sitk.sitkFloat32)
        like.SetOrigin(grid["origin"])
        like.SetSpacing(grid["spacing"])
        like.SetDirection(grid["direction"])
        arrays = [slab_resample(reference, a, grid) for a in (image, fraction, support)]
    values, frac, inside = arrays
    rng = np.random.default_rng([seed, ord(variant)])
    values = values + rng.standard_normal(values.shape).astype(np.float32) * (NOISE_REL_WM * template.wm_value) * (inside >= 0.5)
    values = np.maximum(values, 0.0)
    if variant == "b":
        values = values * template.brain  # b is on the template grid
        values = values / values.max() * 1.4
    elif variant == "c":
        values = np.rint(values / values.max() * 4000.0).astype(np.int16)
    out = sitk.GetImageFromArray(values if variant == "c" else values.astype(np.float32))
    out.CopyInformation(like)
    label = sitk.GetImageFromArray((frac >= 0.5).astype(np.uint8))
    label.CopyInformation(like)
    return out, label


# ---------------------------------------------------------------------------------------------------------------
# Datasets (built once, cached in WORK/datasets)
# ---------------------------------------------------------------------------------------------------------------


def generation(variant: str, seeds: list[int]) -> dict[str, Any]:
    """What a cached dataset was made from (a rebuild happens when this changes)."""
    return {
        "generator": GENERATOR,
        "variant": variant,
        "title": VARIANTS[variant]["title"],
        "seeds": seeds,
        "source": f"MNI152 2009a symmetric from nilearn {data_sources.NILEARN_VERSION} (skull-stripped T1), sha256 "
        + data_sources.MNI152_FILES[data_sources.MNI152_T1],
        "note": NOTE,
    }


def cached(work: Path, seeds: list[int]) -> bool:
    """Whether every variant's dataset exists for exactly these seeds and this generator."""
    for spec in VARIANTS.values():
        data = layout.read_dataset_json(work / "datasets" / spec["dataset"])
        if not data or data.get("generation", {}).get("seeds") != seeds or data["generation"].get("generator") != GENERATOR:
            return False
    return True


def build(work: Path, seeds: list[int]) -> None:
    """Generate every case once, then write it in every variant; dataset.json comes last (a partial build is redone)."""
    template = load_template(str(template_folder(work)))
    roots = {v: work / "datasets" / spec["dataset"] for v, spec in VARIANTS.items()}
    for root in roots.values():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    cases: dict[str, list[dict[str, Any]]] = {}
    for number, seed in enumerate(seeds):
        polarity = "hyper" if number % 2 == 0 else "hypo"
        image, fraction, info = lesion_case(template, seed, polarity)
        case_id = f"mni152_{seed}"
        cases[case_id] = [info]
        for variant, root in roots.items():
            out, label = present(template, image, fraction, variant, seed)
            write_image(out, root / layout.image_path(case_id))
            write_image(label, root / layout.label_path(case_id))
        volumes = ", ".join(f"{item['volume_ml']:.2f}" for item in info["lesions"])
        print(f"  {case_id}: {polarity}, {len(info['lesions'])} lesion(s) of {volumes} mL", flush=True)
    for variant, root in roots.items():
        entries = [layout.training_entry(case_id) for case_id in cases]
        data = layout.dataset_json(
            VARIANTS[variant]["dataset"],
            {"0": "MR"},
            {"background": 0, "lesion": 1},
            entries,
            description=f"MNI152 (evaluation only) variant {variant}: {VARIANTS[variant]['title']}; {NOTE}",
            generation=generation(variant, seeds),
            cases={case_id: info[0] for case_id, info in cases.items()},
        )
        layout.write_dataset_json(root, data)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and report
# ---------------------------------------------------------------------------------------------------------------


def evaluate(model: Path, dataset: Path, output: Path) -> dict[str, Any]:
    """``segment-lesion evaluate`` in a subprocess (this checkout's code); return its metrics JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "SegmentLesion")] + [p for p in [env.get("PYTHONPATH")] if p])
    command = [sys.executable, "-m", "SegmentLesionLib", "evaluate", "--dataset", str(dataset), "--model", str(model)]
    command += ["--output", str(output), "--min-lesion-ml", str(MIN_LESION_ML), "--overwrite"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed on {dataset.name}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return json.loads(output.read_text())


def by_polarity(metrics: dict[str, Any], dataset: Path) -> dict[str, list[int]]:
    """Lesions found / true per lesion polarity (the case's, from dataset.json): ``{"hyper": [found, true], ...}``."""
    polarity = {case_id: info["polarity"] for case_id, info in (layout.read_dataset_json(dataset) or {}).get("cases", {}).items()}
    counts = {"hyper": [0, 0], "hypo": [0, 0]}
    for case in metrics["cases"]:
        kind = polarity.get(case["case_id"])
        if kind in counts:
            counts[kind][0] += int(case["lesions_found"])
            counts[kind][1] += int(case["lesions_true"])
    return counts


def row(variant: str, metrics: dict[str, Any], dataset: Path) -> dict[str, Any]:
    """A summary row of one variant's metrics JSON."""
    mean = metrics["mean"]
    counts = by_polarity(metrics, dataset)
    return {
        "variant": variant,
        "title": VARIANTS[variant]["title"],
        "cases": int(mean["cases"]),
        "mean_dice": mean["dice"],
        "lesions_found": int(mean["lesions_found"]),
        "lesions_true": int(mean["lesions_true"]),
        "lesion_sensitivity": mean["lesion_sensitivity"],
        "false_positive_lesions_per_case": mean["false_positive_lesions_per_case"],
        "hyper_found_true": counts["hyper"],
        "hypo_found_true": counts["hypo"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as an aligned text table."""

    def number(value: Any, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    lines = [f"{'variant':<38} {'cases':>5} {'Dice':>6} {'sensitivity (>=0.1 mL)':>24} {'FP/case':>8} {'hyper':>6} {'hypo':>6}"]
    for r in rows:
        found = f"{number(r['lesion_sensitivity'], '{:.3f}')} ({r['lesions_found']}/{r['lesions_true']})"
        name = f"{r['variant']} {r['title']}"
        hyper, hypo = ("{}/{}".format(*r[key]) for key in ("hyper_found_true", "hypo_found_true"))
        fp = number(r["false_positive_lesions_per_case"], "{:.2f}")
        lines.append(f"{name:<38} {r['cases']:>5} {number(r['mean_dice'], '{:.3f}'):>6} {found:>24} {fp:>8} {hyper:>6} {hypo:>6}")
    lines.append("hyper / hypo: lesions (>= 0.1 mL) found / true in the cases with hyper- / hypo-intense lesions")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder to evaluate")
    parser.add_argument("--work", required=True, type=Path, help="work folder (sources, template, datasets, metrics)")
    parser.add_argument("--cases", type=int, default=8, help="cases per variant (seeds 50001..; default 8)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if not (args.model / "configs" / "metadata.json").is_file():
        parser.error(f"{args.model}: not a model folder (no configs/metadata.json)")
    work = args.work.resolve()
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.cases))
    start = time.perf_counter()
    try:
        if cached(work, seeds):
            print(f"datasets: cached in {work / 'datasets'}")
        else:
            print(f"datasets: generating {len(seeds)} case(s) x {len(VARIANTS)} variants in {work / 'datasets'}", flush=True)
            build(work, seeds)
    except data_sources.DataUnavailable as exc:
        print(f"error: MNI152 unavailable: {exc}", file=sys.stderr)
        return 1
    rows, metrics_files = [], {}
    for variant, spec in VARIANTS.items():
        output = work / f"metrics_{variant}.json"
        print(f"evaluating variant {variant} ({spec['title']})...", flush=True)
        dataset = work / "datasets" / spec["dataset"]
        metrics = evaluate(args.model.resolve(), dataset, output)
        rows.append(row(variant, metrics, dataset))
        metrics_files[variant] = str(output)
    model = metrics.get("model", {})
    print(f"\nmodel {model.get('name')} {model.get('version')} (sha256 {str(model.get('sha256'))[:12]}) on MNI152 2009a")
    print(f"NOTE: {NOTE}.")
    print("".join(f"  - {caveat}\n" for caveat in CAVEATS), end="")
    print(table(rows))
    summary = {
        "note": NOTE,
        "model": model,
        "caveats": list(CAVEATS),
        "min_lesion_ml": MIN_LESION_ML,
        "seeds": seeds,
        "source": generation("a", seeds)["source"],
        "variants": rows,
        "metrics_files": metrics_files,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(summary, work / "summary.json", overwrite=True)
    print(f"summary -> {work / 'summary.json'} ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
