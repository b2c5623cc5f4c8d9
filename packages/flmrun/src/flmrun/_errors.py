"""Every exception flmrun raises.

The hierarchy::

    FlmrunError                 base of everything flmrun raises
    ├── InstanceConfigError     the instance cannot start as configured: FLAME_INSTANCE_ENDPOINT
    │                           is missing, not absolute or not bindable; a malformed --service
    ├── ServiceLoadError        the named service class cannot be imported, is not a
    │                           FlameService, or its constructor failed
    ├── UnsafeArchiveError      an application package archive has an unsupported name, is
    │                           corrupt, has a member that would escape its destination or is
    │                           not a plain file/directory/safe link, or exceeds a size limit
    ├── InstallError            an application package cannot be installed: no
    │                           pyproject.toml/setup.py/setup.cfg, no installer available,
    │                           the installer failed (the message names its log and the
    │                           tool), a bad URL or installer name, a failed download
    └── PythonVersionError      code pickled by value by a client of another Python
                                version (the message names both versions and the fixes)

``TaskFailure`` is not an error of flmrun: a service raises it to fail a task *with an
output* (the Runner stores the pickled exception there); the reported message is that of
its ``cause``.

Failures *inside* a running service (an exception from ``on_task_invoke`` and so on) are
never raised out of flmrun: they are reported to the executor through ``return_code`` and
``message`` of the Instance RPC replies.
"""

from __future__ import annotations

__all__ = [
    "FlmrunError",
    "InstallError",
    "InstanceConfigError",
    "PythonVersionError",
    "ServiceLoadError",
    "TaskFailure",
    "UnsafeArchiveError",
]


class FlmrunError(Exception):
    """Base class of all flmrun errors."""


class InstanceConfigError(FlmrunError):
    """The instance's launch configuration (environment, command line) is unusable."""


class ServiceLoadError(FlmrunError):
    """The service could not be imported or constructed, or is not a FlameService."""


class UnsafeArchiveError(FlmrunError):
    """An archive was refused: unsupported, corrupt, unsafe, or over an extraction limit.

    ``member`` is the offending member name (``None`` when the archive as a whole is at
    fault) and ``reason`` says what is wrong with it.
    """

    def __init__(self, archive: str, member: str | None, reason: str) -> None:
        self.archive = archive
        self.member = member
        self.reason = reason
        where = f"member {member!r} of {archive}" if member is not None else archive
        super().__init__(f"unsafe archive: {where}: {reason}")

    def __reduce__(self) -> tuple[type[UnsafeArchiveError], tuple[str, str | None, str]]:
        return (type(self), (self.archive, self.member, self.reason))


class InstallError(FlmrunError):
    """An application package could not be downloaded or installed."""


class TaskFailure(Exception):
    """Raised by a service to fail the task with ``output`` and the text of ``cause``."""

    def __init__(self, cause: BaseException, output: bytes) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.output = output


class PythonVersionError(FlmrunError):
    """Code pickled by value by a client of another Python ``major.minor``."""
