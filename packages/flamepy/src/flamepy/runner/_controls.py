"""Per-service call controls: ``retries``/``retry_on`` and ``timeout``.

``Runner.service(fn, retries=2, retry_on=(ValueError,), timeout=30)``:

* A call is sent again, up to ``retries`` more times, when its task failed
  because the instance running it was lost (:func:`instance_lost`: the process
  died, was killed, lost its connection), or when it raised an exception that
  is an instance of one of ``retry_on``.  Any other failure, and the last one,
  is raised as usual.  A call of a stateful service that is retried runs again
  after the calls already sent (and, after an instance loss, on a new instance,
  from the state last saved).
* A call that has not finished ``timeout`` seconds after it was made (its
  retries and the time it waited for an instance or for its arguments count)
  fails with :class:`~flamepy.FlameTimeoutError` naming it.  Flame cannot cancel
  a task that runs: a call already sent is abandoned, it runs to its end on the
  cluster and its result is ignored; a call not sent yet is not sent.  The calls
  that take its future as an argument fail alike.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from flamepy._errors import FlameTimeoutError, InvalidArgumentError, TaskFailedError
from flamepy.runner._batch import Batcher, Call, CallState
from flamepy.runner._waiting import settle

log = logging.getLogger("flamepy.runner")

INSTANCE_LOSS = re.compile(
    r"failed while running the task|exited with code|instance (was |is )?lost|"
    r"executor (was |is )?lost",
    re.IGNORECASE,
)
"""What the failure message of a task whose instance was lost says (the local
cluster: ``instance <id> failed while running the task: ...; the instance exited
with code <n>``)."""


def instance_lost(error: BaseException) -> bool:
    """Whether ``error`` says that a call's task failed because its instance was lost,
    not because the call raised (that comes back as the call's own exception, or a
    :class:`~flamepy.RemoteError`)."""
    return type(error) is TaskFailedError and INSTANCE_LOSS.search(error.message) is not None


@dataclass(frozen=True)
class CallControls:
    """One service's ``retries``, ``retry_on`` and ``timeout``."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = None

    @classmethod
    def of(
        cls,
        retries: int,
        retry_on: type[BaseException] | Sequence[type[BaseException]],
        timeout: float | None,
    ) -> CallControls:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgumentError(f"retries must be a whole number >= 0, not {retries!r}")
        kinds = (retry_on,) if isinstance(retry_on, type) else tuple(retry_on)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise InvalidArgumentError(
                    f"retry_on takes exception types (ValueError, ...), not {kind!r}"
                )
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise InvalidArgumentError(f"timeout must be seconds > 0, not {timeout!r}")
            timeout = float(timeout)
        return cls(retries, kinds, timeout)

    @property
    def active(self) -> bool:
        return self.retries > 0 or self.timeout is not None

    def install(self, batcher: Batcher, label: str) -> None:
        """Let ``batcher`` ask whether a failed call goes out again."""
        if self.retries > 0:

            def retry(call: Call, error: BaseException) -> bool:
                return self._retry(call, error, label)

            batcher.retry = retry

    def _retry(self, call: Call, error: BaseException, label: str) -> bool:
        if call.attempts > self.retries:
            return False
        lost = instance_lost(error)
        if not lost and not (self.retry_on and isinstance(error, self.retry_on)):
            return False
        log.info(
            "%s: retrying a call (attempt %d of %d) after %s",
            label,
            call.attempts + 1,
            self.retries + 1,
            "its instance was lost" if lost else type(error).__name__,
        )
        return True

    def arm(self, batcher: Batcher, call: Call, label: str) -> None:
        """Start ``call``'s timeout, if its service has one (on the loop)."""
        if self.timeout is None or call.state is CallState.DONE:
            return
        loop = asyncio.get_running_loop()
        call.timer = loop.call_later(self.timeout, expire, batcher, call, label, self.timeout)


def call_label(method: str | None, name: str) -> str:
    """How an error names a call of the service ``name``."""
    return f"{name}.{method}()" if method else f"{name}()"


def expire(batcher: Batcher, call: Call, label: str, timeout: float) -> None:
    """``call`` ran out of time: it fails with FlameTimeoutError now (on the loop)."""
    call.timer = None
    if call.state is CallState.DONE:
        return
    where = {
        CallState.WAITING: "it was still waiting for its arguments or its turn",
        CallState.QUEUED: "it was not sent yet, and will not be",
        CallState.SENT: "it is abandoned: it runs to its end on the cluster and its "
        "result is ignored (Flame cannot cancel a running task)",
    }[call.state]
    name = call_label(call.method, label)
    error = FlameTimeoutError(f"the call {name} did not finish within {timeout:g}s; {where}")
    if call.state is CallState.WAITING:
        if call.task is not None:
            call.task.cancel()  # it admits the call no further
        batcher.abandon(call, error)
        return
    if call.state is CallState.QUEUED and batcher.cancel_queued(call, error):
        return
    # In a task (or in a batch whose calls refer to each other): the task still needs
    # the call's request and staged arguments, so the call is only settled here.
    call.state = CallState.DONE
    batcher.live.discard(call)
    if call.entered is not None and not call.entered.done():
        call.entered.set_result(None)
    result = call.outcome()
    if not result.done():
        result.set_exception(error)
    settle(call)
    children, call.children = call.children, None
    if children:
        batcher._try_queue(*children)
