"""The Lesions and Correct sections: the lesion table of the result under review, and the embedded Segment Editor.

The table follows the radiologist's edits. A stroke in the Segment Editor fires several events: the refresh
waits until they stop (debounce), runs only while the Lesions section is open (a collapsed table is brought
up to date when it is opened), and measures again only the lesions near the changed voxels
(``lesion_tracker``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .panel_context import PanelContext, call_first

TABLE_REFRESH_MS = 300


class LesionsSection:
    """The lesion table, its summary, jumping to a lesion, and the Segment Editor set to the result.

    Args:
        context: the panel's shared parts.
        logic: the MRML logic.
        on_result: called with the segmentation node under review whenever it changes (or None).
    """

    def __init__(self, context: PanelContext, logic: Any, on_result: Callable[[Any], None]) -> None:
        self.context = context
        self.ui = context.ui
        self.logic = logic
        self.on_result = on_result
        self.segmentation_node: Any = None
        self.lesions: list[dict[str, Any]] = []
        self.stale = False
        self._observation: Optional[int] = None
        self.table_timer = context.qt.QTimer()
        self.table_timer.setSingleShot(True)
        self.table_timer.setInterval(TABLE_REFRESH_MS)
        self.table_timer.timeout.connect(self.refresh_if_shown)
        self.ui.lesionTable.cellClicked.connect(lambda row, *_: self.on_lesion_clicked(row))
        collapsed_signal = getattr(self.ui.lesionsCollapsibleButton, "contentsCollapsed", None)
        if collapsed_signal is not None:
            collapsed_signal.connect(lambda collapsed, *_: None if collapsed else self.refresh_if_shown())
        self.ui.lesionTable.resizeColumnsToContents()
        call_first(self.ui.segmentEditorWidget, ("setMRMLSegmentEditorNode",), logic.segment_editor_node())

    @property
    def shown(self) -> bool:
        """Whether the table can be seen (its section is open)."""
        return not bool(self.ui.lesionsCollapsibleButton.property("collapsed"))

    def show_result(self, node: Any) -> None:
        """Show a result: the lesion table, and the Segment Editor set to it and its volume."""
        self._stop_observing()
        self.segmentation_node = node
        if node is not None:
            volume = self.logic.reference_volume(node)
            call_first(self.ui.segmentEditorWidget, ("setSegmentationNode",), node)
            call_first(self.ui.segmentEditorWidget, ("setSourceVolumeNode", "setMasterVolumeNode"), volume)
            self._observation = self.logic.observe_edits(node, self.on_edited)
        self.refresh_table()
        self.on_result(node)

    def set_segmentation(self, node: Any) -> None:
        """Show an existing result (e.g. restored from the parameter node), or nothing."""
        if node is not None and self.logic.is_result(node):
            self.show_result(node)
        else:
            self._stop_observing()
            self.segmentation_node = None
            self.refresh_table()
            self.on_result(None)

    def on_edited(self) -> None:
        """A segment changed: refresh once the stroke's events have stopped."""
        self.stale = True
        self.table_timer.start()

    def refresh_if_shown(self) -> None:
        """Bring a stale table up to date, if it can be seen."""
        if self.stale and self.shown:
            self.refresh_table()

    def refresh_table(self) -> None:
        """Measure the lesions of the current segmentation and fill the table."""
        self.stale = False
        self.lesions = []
        with self.context.action("Cannot measure the lesions."):
            if self.segmentation_node is not None and self.logic.scene.IsNodePresent(self.segmentation_node):
                self.lesions = self.logic.lesion_table(self.segmentation_node)
        self._fill_table()

    def _fill_table(self) -> None:
        table = self.ui.lesionTable
        table.setRowCount(len(self.lesions))
        grouped = len(label_groups(self.lesions)) > 1
        for row, lesion in enumerate(self.lesions):
            probability = lesion.get("mean_probability")
            cells = [
                f"{lesion['id']} {lesion.get('segment', '')}".strip() if grouped else str(lesion["id"]),
                f"{lesion['volume_ml']:.3f}",
                f"{lesion['max_diameter_mm']:.1f}",
                "-" if probability is None else f"{probability:.2f}",
            ]
            tip = f"{lesion.get('segment', '')}, centre (RAS) {', '.join(f'{v:.1f}' for v in lesion['centroid_ras'])} mm"
            for column, text in enumerate(cells):
                item = self.context.qt.QTableWidgetItem(text)
                item.setToolTip(tip)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        if self.segmentation_node is None:
            self.ui.lesionSummaryLabel.setText("No segmentation yet.")
        else:
            self.ui.lesionSummaryLabel.setText(lesion_summary(self.lesions))

    def on_lesion_clicked(self, row: int) -> None:
        """Centre the slice views on a lesion."""
        if 0 <= row < len(self.lesions):
            with self.context.action("Cannot show this lesion."):
                self.logic.jump_to(self.lesions[row]["centroid_ras"])

    def _stop_observing(self) -> None:
        if self._observation is not None:
            self.logic.stop_observing(self._observation)
            self._observation = None

    def cleanup(self) -> None:
        """Stop the timer and the observation."""
        self.table_timer.stop()
        self._stop_observing()


def label_groups(lesions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The lesions by segment name (their label), in table order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for lesion in lesions:
        groups.setdefault(str(lesion.get("segment", "")), []).append(lesion)
    return groups


def lesion_summary(lesions: list[dict[str, Any]]) -> str:
    """``3 lesion(s), total 1.20 mL``; with several labels one part per label (regions may overlap: no grand total)."""
    groups = label_groups(lesions)
    if len(groups) <= 1:
        return f"{len(lesions)} lesion(s), total {sum(lesion['volume_ml'] for lesion in lesions):.2f} mL"
    parts = [
        f"{name}: {len(members)} lesion(s), {sum(lesion['volume_ml'] for lesion in members):.2f} mL" for name, members in groups.items()
    ]
    return "; ".join(parts)
