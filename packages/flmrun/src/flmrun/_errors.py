"""Every exception flmrun raises.

The hierarchy::

    FlmrunError                 base of everything flmrun raises
    ├── InstanceConfigError     the instance cannot start as configured: FLAME_INSTANCE_ENDPOINT
    │                           is missing, not absolute or not bindable; a malformed --service
    └── ServiceLoadError        the named service class cannot be imported, is not a
                                FlameService, or its constructor failed

Failures *inside* a running service (an exception from ``on_task_invoke`` and so on) are
never raised out of flmrun: they are reported to the executor through ``return_code`` and
``message`` of the Instance RPC replies.
"""

from __future__ import annotations

__all__ = ["FlmrunError", "InstanceConfigError", "ServiceLoadError"]


class FlmrunError(Exception):
    """Base class of all flmrun errors."""


class InstanceConfigError(FlmrunError):
    """The instance's launch configuration (environment, command line) is unusable."""


class ServiceLoadError(FlmrunError):
    """The service could not be imported or constructed, or is not a FlameService."""
