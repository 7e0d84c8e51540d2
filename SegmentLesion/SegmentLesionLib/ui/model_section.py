"""The Inputs section's model and device choice: model folders (remembered), what the model is, where it runs.

"Add model..." installs what it is given as ``segment-lesion models install`` does (a bundle .zip as the MONAI
Model Zoo distributes it, or a folder: loaded once to validate, then registered), in a background process, since
loading runs torch; the registry's copy is then remembered and selected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ModelError
from ..models.spec import METADATA_FILE, load_spec
from ..runtime.jobs import TrainingJob
from .panel_context import PanelContext, failure_reason, prop

MODEL_FOLDERS_KEY = "SegmentLesion/ModelFolders"
DEVICES = (("Auto (GPU when available)", "auto"), ("GPU", "cuda"), ("CPU", "cpu"))


class ModelSection:
    """The model and device combo boxes, the Add-model button and the model description.

    Args:
        context: the panel's shared parts.
        default_model_dir: the bundled default model folder.
        choose_folder: ``choose_folder(title) -> str``: a model folder, a bundle ``.zip``, or a model folder's
            ``configs/metadata.json`` (empty when cancelled).
        install_command: ``install_command(source) -> argv`` of ``segment-lesion models install SOURCE --json``;
            None: a chosen folder is remembered as it is, without installing.
    """

    def __init__(
        self,
        context: PanelContext,
        default_model_dir: Path | None,
        choose_folder: Callable[[str], str],
        install_command: Optional[Callable[[str], list[str]]] = None,
    ) -> None:
        self.context = context
        self.ui = context.ui
        self.default_model_dir = default_model_dir
        self.choose_folder = choose_folder
        self.install_command = install_command
        self.job: Optional[TrainingJob] = None
        self._installed: Optional[dict[str, Any]] = None
        self.fill_models()
        for label, value in DEVICES:
            self.ui.deviceComboBox.addItem(label, value)
        self.ui.addModelFolderButton.clicked.connect(lambda *_: self.add_model_folder())
        self.ui.modelComboBox.currentIndexChanged.connect(lambda *_: self.on_model_changed())
        self.update_model_info()

    def saved_model_folders(self) -> list[str]:
        """Model folders the user added, oldest first."""
        raw = self.context.settings.value(MODEL_FOLDERS_KEY, "[]")
        try:
            folders = json.loads(raw) if isinstance(raw, str) else list(raw or [])
        except ValueError:
            folders = []
        return [str(folder) for folder in folders]

    def remember_model(self, folder: str) -> None:
        """Add a folder to the remembered ones (moved last when known)."""
        folders = [f for f in self.saved_model_folders() if f != folder] + [folder]
        self.context.settings.setValue(MODEL_FOLDERS_KEY, json.dumps(folders))

    def fill_models(self, select: str | None = None) -> None:
        """Fill the model list, selecting ``select`` ("" = the default) when given.

        Signals are blocked: ``clear()`` would emit ``currentIndexChanged(-1)``, and a listener (the parameter
        node) would write the half-filled state back, e.g. the device while a saved scene is being restored.
        """
        combo = self.ui.modelComboBox
        blocked = combo.blockSignals(True)
        try:
            combo.clear()
            if self.default_model_dir is not None:
                combo.addItem(model_title(self.default_model_dir, default=True), "")
            for folder in self.saved_model_folders():
                combo.addItem(model_title(Path(folder)), folder)
            if select is not None:
                for index in range(prop(combo, "count")):
                    if (combo.itemData(index) or "") == select:
                        combo.setCurrentIndex(index)
        finally:
            combo.blockSignals(blocked)

    def model_folder(self) -> str:
        """The selected model folder ("" = the default model)."""
        combo = self.ui.modelComboBox
        index = prop(combo, "currentIndex")
        return str(combo.itemData(index) or "") if index >= 0 else ""

    def model_dir(self) -> Optional[Path]:
        """The selected model folder as a path (the default model's folder for the default)."""
        folder = self.model_folder()
        return Path(folder) if folder else self.default_model_dir

    def select_model(self, folder: str) -> None:
        """Select a model folder ("" = the default); unknown folders are added. Emits no change signal."""
        if folder and folder not in self.saved_model_folders():
            self.remember_model(folder)
        self.fill_models(select=folder)
        self.update_model_info()

    def device(self) -> str:
        """``auto``, ``cuda`` or ``cpu``."""
        combo = self.ui.deviceComboBox
        return str(combo.itemData(prop(combo, "currentIndex")) or "auto")

    def select_device(self, device: str) -> None:
        """Select a device by value."""
        combo = self.ui.deviceComboBox
        for index in range(prop(combo, "count")):
            if combo.itemData(index) == device:
                combo.setCurrentIndex(index)

    def show_device(self, description: str) -> None:
        """Name the device the worker reported in the device list, with its precision.

        E.g. "GPU (NVIDIA H100 80GB HBM3 (fp16))" or "CPU (2 threads, bf16)" (``engine.inference.device_description``).
        """
        if not description:
            return
        value, text = ("cpu", description) if description.startswith("CPU") else ("cuda", f"GPU ({description})")
        combo = self.ui.deviceComboBox
        for index in range(prop(combo, "count")):
            if combo.itemData(index) == value:
                combo.setItemText(index, text)

    @property
    def busy(self) -> bool:
        """True while a model is being installed."""
        return self.job is not None

    def add_model_folder(self, folder: str | None = None) -> bool:
        """Add a model (asked for when not given): installed in the background, or remembered as it is.

        Returns True when an installation started (the panel then polls).
        """
        with self.context.action("Cannot add this model."):
            if self.job is not None:
                return False
            source = folder if folder is not None else self.choose_folder("Choose a MONAI bundle (.zip) or a model folder")
            if not source:
                return False
            path = Path(source)
            if path.name == METADATA_FILE.name and path.parent.name == METADATA_FILE.parent.name:
                path = path.parent.parent  # the folder's configs/metadata.json was chosen
            if path.is_dir():
                load_spec(path)  # a folder that is not a readable model is refused at once, with the reason
            if self.install_command is None:
                self._select_added(str(path.resolve()))
                return False
            if not self.context.packages_ready():
                return False
            self._installed = None
            self.job = TrainingJob(self.install_command(str(path.resolve())))
            self.ui.modelInfoLabel.setText(f"Installing {path.name} (loading it once to check it)...")
            return True
        return False

    def poll(self) -> None:
        """Follow an installation; when it ends, select the installed model or say why it was refused."""
        if self.job is None:
            return
        for event in self.job.poll():
            if "event" not in event:
                self._installed = event  # the one JSON line `models install --json` prints
            elif event.get("event") == "exit":
                job, self.job = self.job, None
                if event.get("returncode") == 0 and self._installed is not None:
                    self._select_added(str(self._installed["path"]))
                else:
                    self.update_model_info()
                    self.context.show_error("Cannot add this model.", failure_reason(job, event.get("returncode")))
                return

    def cancel(self) -> None:
        """Stop a running installation (nothing is registered)."""
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def _select_added(self, folder: str) -> None:
        self.remember_model(folder)
        self.fill_models(select=folder)
        self.on_model_changed()

    def on_model_changed(self) -> None:
        """A new model: show what it is and take its own threshold and minimum size."""
        spec = self.update_model_info()
        if spec is not None:
            self.ui.thresholdSliderWidget.setValue(float(spec.threshold))
            self.ui.minimumSizeSpinBox.setValue(float(spec.min_lesion_mm3))

    def update_model_info(self) -> Any:
        """Describe the selected model under the list; returns its spec (None when it cannot be read)."""
        folder = self.model_dir()
        if folder is None:
            self.ui.modelInfoLabel.setText("No model installed: add a model folder.")
            return None
        try:
            spec = load_spec(folder)
        except ModelError as exc:
            self.ui.modelInfoLabel.setText(f"Model unavailable: {exc}")
            return None
        labels = ", ".join(label.name for label in spec.labels)
        description = spec.description.strip().splitlines()[0] if spec.description.strip() else ""
        text = f"{spec.modality} model, labels: {labels}. {description} Research use only, not for clinical use."
        self.ui.modelInfoLabel.setText(" ".join(text.split()))
        return spec


def model_title(folder: Path, default: bool = False) -> str:
    """The model list's entry for a folder: name and version, or why it cannot be used."""
    try:
        spec = load_spec(folder)
        title = f"{spec.name} {spec.version}"
    except ModelError:
        title = f"{folder.name} (not installed)" if default else f"{folder} (cannot be read)"
    return f"{title} (default)" if default else title
