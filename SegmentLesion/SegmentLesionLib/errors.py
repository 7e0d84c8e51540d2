"""Exceptions that carry a message meant for the user (CLI, worker, Slicer panel)."""


class SegmentLesionError(Exception):
    """An error whose message is shown to the user as it is (no traceback)."""


class InputError(SegmentLesionError):
    """A volume, label or dataset that cannot be used (missing, corrupt, wrong dimension...)."""


class ModelError(SegmentLesionError):
    """A model folder that cannot be loaded safely or is inconsistent."""


class Cancelled(SegmentLesionError):
    """The user cancelled a running job."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
