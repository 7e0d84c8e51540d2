"""The Export section: the corrected case (image, corrected label, the model's own label, provenance) into a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import InputError, SegmentLesionError
from .model_section import ModelSection
from .panel_context import PanelContext, prop

DATASET_FOLDER_KEY = "SegmentLesion/DatasetFolder"


class ExportSection:
    """Dataset folder, case ID, Export, and how many cases the dataset holds.

    Args:
        context: the panel's shared parts.
        logic: the MRML logic.
        models: the model choice (the model named in the provenance when the result does not say).
        current_result: returns the segmentation node under review (or None).
    """

    def __init__(self, context: PanelContext, logic: Any, models: ModelSection, current_result: Callable[[], Any]) -> None:
        self.context = context
        self.ui = context.ui
        self.logic = logic
        self.models = models
        self.current_result = current_result
        self.ui.datasetPathLineEdit.setCurrentPath(str(context.settings.value(DATASET_FOLDER_KEY, "") or ""))
        self.ui.exportButton.clicked.connect(lambda *_: self.export_case())
        self.ui.datasetPathLineEdit.currentPathChanged.connect(lambda *_: self.update_case_count())
        self.update_case_count()
        self.update_state()

    def dataset_folder(self) -> str:
        """The dataset folder field."""
        return str(prop(self.ui.datasetPathLineEdit, "currentPath") or "").strip()

    def update_state(self) -> None:
        """Export is possible once there is a result; propose a new case ID then."""
        ready = self.current_result() is not None
        self.ui.exportButton.setEnabled(ready)
        self.ui.exportButton.setToolTip(
            "Add the image, the corrected segmentation and the model's original output to the dataset."
            if ready
            else "Segment a volume first."
        )
        if ready and not str(prop(self.ui.caseIdLineEdit, "text")).strip():
            from ..data.case_ids import generate_case_id

            folder = self.dataset_folder()
            self.ui.caseIdLineEdit.setText(generate_case_id(folder if folder and Path(folder).is_dir() else None))

    def update_case_count(self) -> None:
        """How many cases the dataset folder holds."""
        folder = self.dataset_folder()
        if not folder or not Path(folder).is_dir():
            self.ui.caseCountLabel.setText("Choose a dataset folder (it is created at the first export).")
            return
        from ..data.summary import dataset_summary

        try:
            self.ui.caseCountLabel.setText(f"Dataset: {dataset_summary(folder)['sentence']}")
        except SegmentLesionError as exc:
            self.ui.caseCountLabel.setText(f"Dataset: {exc}")

    def export_case(self) -> Optional[dict[str, Any]]:
        """Export the current volume and its corrected segmentation to the dataset folder."""
        result = None
        with self.context.action("Export failed: nothing was written."):
            node = self.current_result()
            if node is None or not self.logic.scene.IsNodePresent(node):
                raise InputError("Segment a volume first.")
            folder = self.dataset_folder()
            if not folder:
                raise InputError("Choose a dataset folder.")
            # A scene reopened later reaches Export without a Segment click: check the packages here too.
            if not self.context.packages_ready():
                return None
            from ..data.case_ids import generate_case_id
            from ..data.export import export_case

            volume = self.logic.reference_volume(node)
            model = self.logic.model_summary(node)
            model_folder = model.get("folder") if model.get("folder") and Path(model["folder"]).is_dir() else self.models.model_dir()
            channels = self.logic.channel_volumes(node)  # a multi-sequence result: every channel's volume
            images = [self.logic.volume_image(channel) for channel in channels] if channels else self.logic.volume_image(volume)
            result = export_case(
                images,
                self.logic.labelmap_image(node, volume),
                folder,
                ai_label=self.logic.ai_labelmap_image(node),
                case_id=str(prop(self.ui.caseIdLineEdit, "text")).strip() or None,
                model=model_folder,
                report={"model": model, "settings": self.logic.settings(node)},
                clicks=self.logic.click_records(node),
            )
            self.context.settings.setValue(DATASET_FOLDER_KEY, folder)
            self.ui.exportSummaryLabel.setText(result.get("message", f"Exported {result.get('case_id')}."))
            self.ui.caseIdLineEdit.setText(generate_case_id(folder))
            self.update_case_count()
        return result
