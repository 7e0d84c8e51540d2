"""What every section of the panel shares: the widgets, the Qt namespace, settings, and one error context per action.

PythonQt exposes Qt properties as attributes (``label.text``) where PySide6 has getters (``label.text()``):
values are read with ``prop()``, and only setters (``setText``...), which both bindings share, are called.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, ContextManager, Iterator

from ..errors import SegmentLesionError

logger = logging.getLogger("SegmentLesion")


def prop(widget: Any, name: str) -> Any:
    """A Qt property's value in both bindings (PythonQt: attribute; PySide6: getter method)."""
    value = getattr(widget, name)
    return value() if callable(value) else value


def call_first(widget: Any, names: tuple[str, ...], *args: Any) -> None:
    """Call the first method of ``names`` the widget has (Slicer renamed some between versions)."""
    for name in names:
        method = getattr(widget, name, None)
        if method is not None:
            method(*args)
            return


class PanelContext:
    """The panel's shared parts, handed to each section.

    Args:
        ui: the loaded .ui's widgets by object name.
        qt: a namespace with ``QTimer`` and ``QTableWidgetItem``.
        error_context: ``error_context(message)`` shows an exception raised inside it, prefixed by ``message``.
        settings: persistent settings (``value(key, default)``, ``setValue(key, value)``).
        needs_packages: called before every action that needs the optional Python packages (Segment, Export,
            Retrain, Compare, Promote); returns False when the user declined to install them.
    """

    def __init__(
        self,
        ui: Any,
        qt: Any,
        error_context: Callable[[str], ContextManager[Any]],
        settings: Any,
        needs_packages: Callable[[], bool] | None = None,
    ) -> None:
        self.ui = ui
        self.qt = qt
        self.error_context = error_context
        self.settings = settings
        self.needs_packages = needs_packages

    @contextlib.contextmanager
    def action(self, message: str) -> Iterator[None]:
        """One user action: an error inside is shown once (with ``message``), logged, and ends the action."""
        try:
            with self.error_context(message):
                yield
        except SegmentLesionError as exc:  # a message for the user: already shown, no traceback needed
            logger.info("%s %s", message, exc)
        except Exception:  # shown to the user by error_context; keep the details in the log
            logger.exception("%s", message)

    def show_error(self, message: str, detail: str) -> None:
        """Show an error that did not come from an exception in a user action (e.g. from a background process)."""
        with self.action(message):
            raise SegmentLesionError(detail)

    def packages_ready(self) -> bool:
        """The dependency check for an action (raises to the action's error context when it fails)."""
        return self.needs_packages is None or self.needs_packages() is not False


def failure_reason(job: Any, returncode: Any) -> str:
    """Why a background ``segment-lesion`` step failed: its ``error:`` line, else its last stderr line, else its exit code."""
    errors = [line for line in job.stderr_lines if line.startswith("error:")]
    detail = errors[-1][len("error:") :].strip() if errors else (job.stderr_lines[-1] if job.stderr_lines else "")
    return detail or f"exit code {returncode}"
