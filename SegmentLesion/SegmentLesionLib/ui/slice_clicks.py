"""Clicks in Slicer's slice views as RAS points: the "Click to fix" mode's mouse handling (no torch, no Qt imports).

``SliceViewClicks`` observes the render window interactor of every slice view of a layout manager
(``layoutManager.sliceWidget(name).interactorStyle().GetInteractor()``, as ``slicer.util.clickAndDrag`` reaches it)
with a priority above the view's own interactor style. A left click is an ``add``; Shift + left click and a right
click are a ``remove``. The press is taken (the view's observers after ours are aborted), so the click does not also
adjust window/level or zoom. The event's display position becomes a RAS point through the slice node's ``XYToRAS``
matrix (the first pane of a light box).
"""

from __future__ import annotations

from typing import Any, Callable

import vtk

ClickHandler = Callable[[list[float], bool], None]  # (RAS point, remove)
PRIORITY = 10.0  # above the interactor style's observers, so the click is ours


class SliceViewClicks:
    """Turn presses in slice views into ``on_click(ras, remove)`` calls while started.

    Args:
        layout_manager: Slicer's layout manager (``slicer.app.layoutManager()``): ``sliceViewNames()`` and
            ``sliceWidget(name)``, whose ``interactorStyle().GetInteractor()`` and ``mrmlSliceNode()`` are used.
        on_click: called with the RAS point (world mm) and whether it removes.
    """

    def __init__(self, layout_manager: Any, on_click: ClickHandler) -> None:
        self.layout_manager = layout_manager
        self.on_click = on_click
        self._observations: list[tuple[Any, int]] = []

    @property
    def active(self) -> bool:
        return bool(self._observations)

    def start(self) -> int:
        """Observe every slice view of the layout (again: views added since are included); returns how many."""
        self.stop()
        for name in self.layout_manager.sliceViewNames():
            widget = self.layout_manager.sliceWidget(name)
            if widget is None:
                continue
            interactor = widget.interactorStyle().GetInteractor()
            slice_node = widget.mrmlSliceNode()
            if interactor is None or slice_node is None:
                continue
            for event, right in ((vtk.vtkCommand.LeftButtonPressEvent, False), (vtk.vtkCommand.RightButtonPressEvent, True)):
                own: dict[str, int] = {}
                own["tag"] = interactor.AddObserver(event, self._handler(interactor, slice_node, right, own), PRIORITY)
                self._observations.append((interactor, own["tag"]))
        return len(self._observations) // 2

    def _handler(self, interactor: Any, slice_node: Any, right: bool, own: dict[str, int]) -> Callable[[Any, str], None]:
        def pressed(caller: Any, event: str) -> None:
            command = interactor.GetCommand(own["tag"])
            if command is not None:  # the view's own observers (window/level, zoom) do not get this press
                command.SetAbortFlag(1)
            x, y = interactor.GetEventPosition()
            ras = slice_node.GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3]
            self.on_click([float(v) for v in ras], right or bool(interactor.GetShiftKey()))

        return pressed

    def stop(self) -> None:
        """Stop observing (the views behave as before)."""
        for interactor, tag in self._observations:
            interactor.RemoveObserver(tag)
        self._observations = []
