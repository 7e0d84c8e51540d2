"""Clicks in Slicer's slice views as RAS points: the "Click to fix" mode's mouse handling (no torch, no Qt imports).

``SliceViewClicks`` observes the render window interactor of every slice view of a layout manager
(``layoutManager.sliceWidget(name).interactorStyle().GetInteractor()``, as ``slicer.util.clickAndDrag`` reaches it)
with a priority above the view's own interactor style. A left click is an ``add``; Shift + left click and a right
click are a ``remove``. The press is taken (the view's observers after ours are aborted), so the click does not also
adjust window/level or zoom. Qt sends the second press of a quick pair as a double-click event, not a press: those
are clicks too (and taken, so a double click does not also maximise the view). While ``enabled()`` is False (a
Segment Editor effect is active: Paint, Erase...) presses are left to the view and its effect.

The event's display position becomes a RAS point the way Slicer's displayable managers convert it
(``qMRMLSliceView.convertDeviceToXYZ`` then ``convertXYZToRAS``, in Slicer 5.8 and later: the pane of a light box
is found from the position); a widget without ``sliceView()`` falls back to the slice node's ``XYToRAS`` matrix
(right for a single pane).
"""

from __future__ import annotations

from typing import Any, Callable

import vtk

ClickHandler = Callable[[list[float], bool], None]  # (RAS point, remove)
PRIORITY = 10.0  # above the interactor style's observers, so the click is ours
# (event, right button): a press, and the second press of a quick pair, which Qt's VTK adapter sends as a double click
EVENTS = (
    (vtk.vtkCommand.LeftButtonPressEvent, False),
    (vtk.vtkCommand.LeftButtonDoubleClickEvent, False),
    (vtk.vtkCommand.RightButtonPressEvent, True),
    (vtk.vtkCommand.RightButtonDoubleClickEvent, True),
)


class SliceViewClicks:
    """Turn presses in slice views into ``on_click(ras, remove)`` calls while started.

    Args:
        layout_manager: Slicer's layout manager (``slicer.app.layoutManager()``): ``sliceViewNames()`` and
            ``sliceWidget(name)``, whose ``interactorStyle().GetInteractor()`` and ``mrmlSliceNode()`` are used.
        on_click: called with the RAS point (world mm) and whether it removes.
        enabled: whether a press is taken now (None: always); when it returns False the press goes to the view.
    """

    def __init__(self, layout_manager: Any, on_click: ClickHandler, enabled: Callable[[], bool] | None = None) -> None:
        self.layout_manager = layout_manager
        self.on_click = on_click
        self.enabled = enabled
        self._observations: list[tuple[Any, int]] = []

    @property
    def active(self) -> bool:
        return bool(self._observations)

    def start(self) -> int:
        """Observe every slice view of the layout (again: views added since are included); returns how many."""
        self.stop()
        views = 0
        for name in self.layout_manager.sliceViewNames():
            widget = self.layout_manager.sliceWidget(name)
            if widget is None:
                continue
            interactor = widget.interactorStyle().GetInteractor()
            slice_node = widget.mrmlSliceNode()
            if interactor is None or slice_node is None:
                continue
            views += 1
            for event, right in EVENTS:
                own: dict[str, int] = {}
                own["tag"] = interactor.AddObserver(event, self._handler(widget, interactor, slice_node, right, own), PRIORITY)
                self._observations.append((interactor, own["tag"]))
        return views

    def _handler(self, widget: Any, interactor: Any, slice_node: Any, right: bool, own: dict[str, int]) -> Callable[[Any, str], None]:
        def pressed(caller: Any, event: str) -> None:
            if self.enabled is not None and not self.enabled():
                return
            command = interactor.GetCommand(own["tag"])
            if command is not None:  # the view's own observers (window/level, zoom) do not get this press
                command.SetAbortFlag(1)
            x, y = interactor.GetEventPosition()
            self.on_click(event_ras(widget, slice_node, int(x), int(y)), right or bool(interactor.GetShiftKey()))

        return pressed

    def stop(self) -> None:
        """Stop observing (the views behave as before)."""
        for interactor, tag in self._observations:
            interactor.RemoveObserver(tag)
        self._observations = []


def event_ras(widget: Any, slice_node: Any, x: int, y: int) -> list[float]:
    """The RAS point (mm) of a display position in a slice widget, as Slicer's displayable managers compute it."""
    view = widget.sliceView() if hasattr(widget, "sliceView") else None
    if view is not None and hasattr(view, "convertDeviceToXYZ"):
        return [float(v) for v in view.convertXYZToRAS(view.convertDeviceToXYZ([x, y]))]
    return [float(v) for v in slice_node.GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3]]
