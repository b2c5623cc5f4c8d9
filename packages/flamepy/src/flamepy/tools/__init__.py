"""Tools built on the Flame client: :mod:`flamepy.tools.sandbox` runs scripts on
``flmexec``, the application every cluster registers at start."""

from flamepy.tools.sandbox import (
    AsyncSandbox,
    Sandbox,
    SandboxAttr,
    SandboxOutput,
)

__all__ = ["AsyncSandbox", "Sandbox", "SandboxAttr", "SandboxOutput"]
