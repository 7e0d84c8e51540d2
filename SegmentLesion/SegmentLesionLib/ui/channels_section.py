"""The Inputs section's volume selectors: one per input channel of the model, labelled with the channel's name.

A model with one input channel shows the .ui's own ``inputSelector`` ("Input volume:"). A model with several
(e.g. T1c, T1, T2, FLAIR) labels that selector with its first channel and adds one selector per further channel
below it; each is filled from the scene's volume names (``channels.assign_volumes``: ``*t1c*`` for T1c, never for
T1) when the model is chosen and when volumes are added. The same volume for two channels is refused.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import InputError
from .channels import assign_volumes, repeated_volume
from .panel_context import PanelContext

SINGLE_LABEL = "Input volume:"


class ChannelsSection:
    """The volume selector of each input channel.

    Args:
        context: the panel's shared parts (``context.qt.QLabel`` makes the channel labels).
        new_selector: makes one more volume selector on the scene (Slicer: a ``qMRMLNodeComboBox`` for scalar
            volumes); None: the panel offers one channel only.
    """

    def __init__(self, context: PanelContext, new_selector: Optional[Callable[[], Any]] = None) -> None:
        self.context = context
        self.ui = context.ui
        self.new_selector = new_selector
        self.names: list[str] = []
        self.rows: list[tuple[Any, Any]] = []  # (label, selector) of the channels after the first
        added = getattr(self.ui.inputSelector, "nodeAdded", None)
        if added is not None:  # a volume loaded later (e.g. the FLAIR of a study) is assigned if it fits
            added.connect(lambda *_: self.assign_empty())

    @property
    def selectors(self) -> list[Any]:
        """The selector of each channel of the current model, in its channel order."""
        return [self.ui.inputSelector] + [selector for _, selector in self.rows[: max(len(self.names) - 1, 0)]]

    def set_channels(self, names: list[str]) -> None:
        """Show one selector per channel (``names``: the model's channel names; one name or none: a single input)."""
        self.names = list(names) if len(names) > 1 else []
        if not self.names:
            self.ui.inputVolumeLabel.setText(SINGLE_LABEL)
            for label, selector in self.rows:
                label.setVisible(False)
                selector.setVisible(False)
            return
        if self.new_selector is None:
            raise InputError(f"this panel cannot show several input channels ({', '.join(self.names)})")
        while len(self.rows) < len(self.names) - 1:
            self._add_row()
        self.ui.inputVolumeLabel.setText(f"{self.names[0]}:")
        for index, (label, selector) in enumerate(self.rows):
            shown = index + 1 < len(self.names)
            label.setVisible(shown)
            selector.setVisible(shown)
            if shown:
                label.setText(f"{self.names[index + 1]}:")
                selector.setToolTip(f"The {self.names[index + 1]} volume of the case (resampled onto {self.names[0]}'s grid).")
        self.assign()

    def _add_row(self) -> None:
        label = self.context.qt.QLabel("")
        selector = self.new_selector()
        layout = getattr(self.ui, "inputsFormLayout", None) or self.ui.inputSelector.parentWidget().layout()
        layout.insertRow(len(self.rows) + 1, label, selector)
        self.rows.append((label, selector))

    def candidates(self) -> dict[str, Any]:
        """The volumes the selectors offer by node ID, in their order (``qMRMLNodeComboBox.nodeFromIndex``)."""
        selector = self.ui.inputSelector
        nodes = [selector.nodeFromIndex(index) for index in range(selector.nodeCount())]
        return {node.GetID(): node for node in nodes if node is not None}

    def assign(self, only_empty: bool = False) -> None:
        """Choose each channel's volume from the volume names (kept where no name fits; ``only_empty``: only
        channels without a volume)."""
        if not self.names:
            return
        nodes = self.candidates()
        chosen = assign_volumes(self.names, [(node_id, node.GetName()) for node_id, node in nodes.items()])
        for selector, node_id in zip(self.selectors, chosen):
            if node_id is not None and not (only_empty and selector.currentNode() is not None):
                selector.setCurrentNode(nodes[node_id])

    def assign_empty(self) -> None:
        """Fill the channels that have no volume yet (after a volume was added to the scene)."""
        if self.names and any(selector.currentNode() is None for selector in self.selectors):
            self.assign(only_empty=True)

    def volumes(self) -> list[Any]:
        """The volume node of each channel, in the model's channel order.

        Raises:
            InputError: a channel without a volume, or one volume for two channels.
        """
        nodes = [selector.currentNode() for selector in self.selectors]
        names = self.names or ["input"]
        for name, node in zip(names, nodes):
            if node is None:
                raise InputError("Select an input volume first." if not self.names else f"Select the {name} volume.")
        repeated = repeated_volume(names, [node.GetID() for node in nodes])
        if repeated is not None:
            raise InputError(f"{repeated[0]} and {repeated[1]} show the same volume; each channel needs its own.")
        return nodes

    def set_enabled(self, enabled: bool) -> None:
        """Lock the selectors while a segmentation runs."""
        for selector in self.selectors:
            selector.setEnabled(enabled)
