"""``models``: the model registry from the command line (install, list, add, evaluate, compare, promote, rollback, history, path)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_device_option, console_progress, end_progress_line

if TYPE_CHECKING:  # the registry (and the engine behind it) loads only when a command runs
    from ..learning.comparison import Comparison
    from ..learning.registry import Registry

EXIT_NOT_PROMOTED = 3
REGISTRY_HELP = "registry folder (default: $SEGMENT_LESION_REGISTRY, else ~/.segment-lesion/registry)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", help=REGISTRY_HELP)
    parser = subparsers.add_parser(
        "models",
        help="model versions: install, list, add, evaluate, compare, promote, rollback, history",
        description="A local registry of model versions with one active model. `promote` activates a candidate "
        "only when it scores at least as well as the active model on a fixed evaluation dataset.",
    )
    sub = parser.add_subparsers(dest="models_command", required=True)

    sub.add_parser("list", parents=[common], help="list the registered versions (* = active)").set_defaults(handler=run_list)

    install = sub.add_parser(
        "install",
        parents=[common],
        help="install a MONAI bundle offline: a .zip as the Model Zoo distributes it, or a folder",
        description="Verify the checksum (when given), load the model once to validate it, and register it "
        "(the first one becomes active). Nothing is downloaded.",
    )
    install.add_argument("source", metavar="ARCHIVE_OR_FOLDER", help="bundle .zip (e.g. spleen_ct_segmentation_v0.5.9.zip) or model folder")
    install.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive (of the weights file, for a folder)")
    install.add_argument("--json", action="store_true", help="print the new version's entry as one line of JSON")
    install.set_defaults(handler=run_install)

    add = sub.add_parser("add", parents=[common], help="copy a model folder into the registry (the first one becomes active)")
    add.add_argument("model", nargs="?", metavar="MODEL_DIR", help="model folder (default: the bundled default model)")
    add.add_argument("--parent", help="id of the version it was trained from (default: from its training metadata)")
    add.add_argument("--json", action="store_true", help="print the new version's entry as one line of JSON")
    add.set_defaults(handler=run_add)

    evaluate = sub.add_parser("evaluate", parents=[common], help="evaluate a version on a dataset (results are cached)")
    evaluate.add_argument("id", metavar="ID", help="version id, 'active' or a sha256 prefix")
    _add_eval_options(evaluate)
    evaluate.add_argument("--refresh", action="store_true", help="evaluate again even when a cached result exists")
    evaluate.set_defaults(handler=run_evaluate)

    compare = sub.add_parser(
        "compare", parents=[common], help="evaluate a version and the active one on the same dataset and show both; change nothing"
    )
    compare.add_argument("id", metavar="ID", help="candidate version id or sha256 prefix")
    _add_eval_options(compare)
    compare.add_argument("--json", action="store_true", help="print the comparison as one line of JSON (for the Slicer panel)")
    compare.set_defaults(handler=run_compare)

    promote = sub.add_parser(
        "promote", parents=[common], help="activate a version if it scores at least as well as the active one (exit 3 when not promoted)"
    )
    promote.add_argument("id", metavar="ID", help="candidate version id or sha256 prefix")
    _add_eval_options(promote)
    promote.add_argument("--force", action="store_true", help="promote even when the candidate scores lower (needs --reason)")
    promote.add_argument("--reason", help="why (required with --force; recorded in the history)")
    promote.add_argument(
        "--dry-run", action="store_true", help="what `models compare` does: evaluate and compare both models, change nothing"
    )
    promote.add_argument("--json", action="store_true", help="print the decision as JSON (for scripts and the Slicer panel)")
    promote.set_defaults(handler=run_promote)

    rollback = sub.add_parser("rollback", parents=[common], help="make an earlier active version active again")
    rollback.add_argument("id", nargs="?", metavar="ID", help="version to return to (default: the one active before the current one)")
    rollback.add_argument("--reason", help="why (recorded in the history)")
    rollback.set_defaults(handler=run_rollback)

    history = sub.add_parser("history", parents=[common], help="activations, promotions (and refusals) and rollbacks, oldest first")
    history.set_defaults(handler=run_history)

    path = sub.add_parser("path", parents=[common], help="print the folder of the active version (or of ID), for --model")
    path.add_argument("id", nargs="?", default="active", metavar="ID")
    path.set_defaults(handler=run_path)


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="evaluation dataset folder (dataset.json, imagesTr, labelsTr)")
    add_device_option(parser)
    parser.add_argument("--min-lesion-ml", type=float, default=0.0, help="minimum true lesion volume for lesion sensitivity (default 0)")


def _registry(args: argparse.Namespace) -> Registry:
    from ..learning.registry import Registry

    return Registry(args.registry)


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def list_text(registry: Registry) -> str:
    """The versions as a table (``*`` marks the active one)."""
    index = registry.index()
    if not index.models:
        return f"registry {registry.path}: empty (add a model with `segment-lesion models add [MODEL_DIR]`)"
    rows = [["", "id", "name", "version", "sha256", "parent", "created", "trained on", "eval dice"]]
    for entry in index.models:
        source = entry.source
        trained = f"{source.dataset} ({source.cases} cases)" if source.dataset else "-"
        last = entry.evaluations[-1] if entry.evaluations else None
        dice = f"{_fmt(last.mean_dice)} ({last.dataset})" if last else "-"
        active = "*" if entry.id == index.active else ""
        rows.append(
            [active, entry.id, entry.name, entry.version, entry.sha256[:12], entry.parent_id or "-", entry.created or "-", trained, dice]
        )
    return f"registry {registry.path} (* = active)\n" + _table(rows)


def history_text(registry: Registry) -> str:
    """The history as a table, oldest first."""
    events = registry.history()
    if not events:
        return f"registry {registry.path}: no history yet"
    rows = [["created", "event", "id", "from", "dice (candidate / active)", "reason"]]
    for event in events:
        scores = f"{_fmt(event.scores.candidate_dice)} / {_fmt(event.scores.active_dice)}" if event.scores else "-"
        name = event.event + (" (forced)" if event.forced else "")
        rows.append([event.created or "-", name, event.id, event.from_id or "-", scores, event.reason or "-"])
    return _table(rows)


def comparison_text(comparison: Comparison, message: str) -> str:
    """Both models' scores on the evaluation dataset, then ``message`` (the verdict or the decision)."""
    lines = []
    if comparison.dataset is not None:
        dataset = comparison.dataset
        lines.append(f"evaluation dataset {dataset.name} ({len(dataset.case_ids)} cases, fingerprint {dataset.fingerprint[:12]})")
        for role, side in (("candidate", comparison.candidate), ("active", comparison.active)):
            if side is None:
                lines.append(f"  {role:9s}  none")
                continue
            sensitivity = side.mean.lesion_sensitivity if side.mean else None
            fp_per_case = side.mean.false_positive_lesions_per_case if side.mean else None
            cached = " (cached)" if side.cached else ""
            lines.append(
                f"  {role:9s}  {side.id:>4s}  {side.name} {side.version}  mean Dice {_fmt(side.dice)}  "
                f"lesion sensitivity {_fmt(sensitivity, 3)}  FP lesions/case {_fmt(fp_per_case, 2)}{cached}"
            )
    lines.append(message)
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    """``models list``."""
    print(list_text(_registry(args)))
    return 0


def run_history(args: argparse.Namespace) -> int:
    """``models history``."""
    print(history_text(_registry(args)))
    return 0


def run_path(args: argparse.Namespace) -> int:
    """``models path [ID]``."""
    print(_registry(args).model_dir(args.id))
    return 0


def run_install(args: argparse.Namespace) -> int:
    """``models install ARCHIVE_OR_FOLDER [--sha256 HEX]``."""
    registry = _registry(args)
    entry = registry.install(args.source, args.sha256)
    return _print_added(registry, entry, args.json, "installed")


def _print_added(registry: Registry, entry: Any, as_json: bool, verb: str) -> int:
    active = registry.index().active == entry.id
    if as_json:
        print(json.dumps({**entry.to_json(), "path": str(registry.folder(entry)), "active": active}))
        return 0
    parent = f", parent {entry.parent_id}" if entry.parent_id else ""
    state = " (active)" if active else ""
    print(f"{verb} {entry.id}: {entry.name} {entry.version} sha256 {entry.sha256[:12]}{parent}{state}")
    if verb == "installed":
        print(f"segment with: segment-lesion segment INPUT --model {registry.folder(entry)} --output OUT")
    return 0


def run_add(args: argparse.Namespace) -> int:
    """``models add [MODEL_DIR]``: the bundled default model when no folder is given."""
    from ..models.spec import default_model_dir

    registry = _registry(args)
    entry = registry.add(Path(args.model) if args.model else default_model_dir(), parent=args.parent)
    return _print_added(registry, entry, args.json, "added")


def run_evaluate(args: argparse.Namespace) -> int:
    """``models evaluate ID``: the metrics table of one version (cached when the same weights saw the same data)."""
    from .evaluate import format_table

    registry = _registry(args)
    try:
        evaluation = registry.evaluate(
            args.id, args.dataset, args.device, args.min_lesion_ml, refresh=args.refresh, progress=console_progress("evaluating")
        )
    finally:
        end_progress_line()
    result = evaluation.result
    cached = " (cached)" if evaluation.cached else ""
    print(f"{evaluation.registry_id}: {result.model.name} {result.model.version} on {result.dataset.name}{cached}")
    print(format_table(result))
    return 0


def run_compare(args: argparse.Namespace, dry_run: bool = False) -> int:
    """``models compare ID`` and ``models promote ID --dry-run``: one operation, which changes nothing.

    The dry run exits like the promotion would (3 when the candidate would not be promoted).
    """
    registry = _registry(args)
    try:
        comparison = registry.compare(args.id, args.dataset, args.device, args.min_lesion_ml, progress=console_progress("evaluating"))
    finally:
        end_progress_line()
    message = f"{comparison.candidate.id} is {comparison.verdict} the active model"
    if dry_run:
        message = f"dry run: {message}; nothing changed"
    if args.json:
        print(json.dumps({**comparison.to_json(), "message": message}))
    else:
        print(comparison_text(comparison, message))
    return EXIT_NOT_PROMOTED if dry_run and not comparison.at_least_as_good else 0


def run_promote(args: argparse.Namespace) -> int:
    """``models promote ID``: exit 3 when the candidate is not promoted."""
    if args.dry_run:
        return run_compare(args, dry_run=True)
    registry = _registry(args)
    try:
        decision = registry.promote(
            args.id,
            args.dataset,
            force=args.force,
            reason=args.reason,
            device=args.device,
            min_lesion_ml=args.min_lesion_ml,
            progress=console_progress("evaluating"),
        )
    finally:
        end_progress_line()
    if args.json:
        print(json.dumps(decision.to_json(), indent=2))
    else:
        print(comparison_text(decision.comparison, decision.message))
    return 0 if decision.promoted or decision.comparison.already_active else EXIT_NOT_PROMOTED


def run_rollback(args: argparse.Namespace) -> int:
    """``models rollback [ID]``."""
    event = _registry(args).rollback(args.id, reason=args.reason)
    print(f"active model: {event.id} (was {event.from_id})")
    return 0
