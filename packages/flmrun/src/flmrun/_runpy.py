"""Serving Runner requests: the executor side of ``flamepy.runner`` (runner-wire §4).

On session enter: decode the BSON ObjectRef in ``common_data``, fetch the pickled
``RunnerContext`` from the cache, make sure the application package is installed,
and instantiate a class.  On each task: decode the ``RunnerRequest``, fetch the
ObjectRefs among its arguments (nested ones too) in parallel, call, store the
result in the cache and answer with its BSON ObjectRef (or the value itself,
when the client offered to take small results inline).  A failure carries the
pickled exception in the output so the client can re-raise it as itself.

A request with the ``flame_batch`` attribute carries further calls: they run in
order, each with its own output, and a ``BatchSlot`` argument stands for the
result of an earlier call of the same batch (see ``flamepy.runner._batch``).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from flamepy._cache.codec import MAGIC_PICKLE, as_native, encode_opaque, unpickle
from flamepy._pickle import PROTOCOL, is_plain
from flamepy.core.cache import ObjectRef, get_object, put_encoded, put_object, update_object
from flamepy.runner._calls import size_hint
from flamepy.runner._walk import find, replace
from flamepy.runner.types import (
    BATCH_ATTRIBUTE,
    BATCH_RESULT_MAGIC,
    ERROR_RESULT_MAGIC,
    INLINE_ATTRIBUTE,
    INLINE_RESULT_MAGIC,
    OUTPUT_ATTRIBUTE,
    REBUILD_EXCEPTION,
    BatchSlot,
    RunnerContext,
    RunnerRequest,
)
from flmrun._errors import PythonVersionError, TaskFailure
from flmrun._output import OUTPUT
from flmrun._pyversion import THIS_PYTHON, check_payload, sender_python
from flmrun._service import FlameService, SessionContext, TaskContext

log = logging.getLogger("flmrun.runpy")

FETCH_THREADS = 8
PACKAGE_SRC_ENV = "FLAME_PACKAGE_SRC"
CHECKPOINT_FLUSH_TIMEOUT = 30.0
"""Seconds session leave waits for the last state snapshot to be stored."""
CHECKPOINT_INTERVAL = 0.05
"""Seconds between two state snapshots written to the cache, at least."""


def _bson_ref(value: bytes) -> ObjectRef | None:
    """A top-level bytes argument that is a BSON ObjectRef (Flame's runpy accepts those)."""
    if len(value) > 4096 or len(value) < 5:
        return None
    try:
        return ObjectRef.decode(value)
    except Exception:
        return None


OUTPUT_BUDGET = 4 * 1024 * 1024 - 64 * 1024
"""A real executor manager fails a task whose result is over 4 MiB (T2 of
flame-server-semantics.md): every task output stays under this; large values go
through the cache, and an oversized error is cut down."""
SHORT_ERROR = 2048
"""Characters of message and of traceback kept when an error output is cut down."""


def error_output(exc: BaseException, limit: int = OUTPUT_BUDGET) -> bytes:
    """``FLME`` + pickle((exception or None, type name, message, traceback text)).

    Over ``limit`` bytes, the exception object is left out and the message and the
    traceback are cut to their first and last :data:`SHORT_ERROR` characters."""
    kind = type(exc)
    type_name = kind.__qualname__
    if kind.__module__ != "builtins":
        type_name = f"{kind.__module__}.{type_name}"
    text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    message = str(exc)
    try:
        payload: bytes = cloudpickle.dumps((exc, type_name, message, text))
        pickle.loads(payload)  # it must load again on the client
    except Exception:
        payload = _rebuildable(exc, type_name, message, text)
    if len(payload) + 4 > limit:
        short = message[:SHORT_ERROR] + (" ... (cut)" if len(message) > SHORT_ERROR else "")
        tail = text[-SHORT_ERROR:]
        payload = pickle.dumps((None, type_name, short, tail), protocol=pickle.HIGHEST_PROTOCOL)
    return ERROR_RESULT_MAGIC + payload


def _rebuildable(exc: BaseException, type_name: str, message: str, text: str) -> bytes:
    """An exception that does not unpickle as itself (a constructor with other
    arguments than its ``args``): its type, args and attributes, which the client
    rebuilds without calling the constructor (``REBUILD_EXCEPTION``); or, when even
    that cannot be pickled, no exception at all."""
    shape = (REBUILD_EXCEPTION, type(exc), exc.args, dict(getattr(exc, "__dict__", {})))
    try:
        payload: bytes = cloudpickle.dumps((shape, type_name, message, text))
        pickle.loads(payload)
    except Exception:
        payload = cloudpickle.dumps((None, type_name, message, text))
    return payload


def _unpickle_from(data: Any, what: str, sender: str | None) -> Any:
    """Unpickle what a client of Python ``sender`` sent; refuse by-value code of
    another version first, and name the mismatch when unpickling fails anyway."""
    sender = check_payload(data, what, sender)
    try:
        return unpickle(data)
    except Exception as exc:
        if sender is None or sender == THIS_PYTHON:
            raise
        raise PythonVersionError(
            f"{what} could not be unpickled ({type(exc).__name__}: {exc}); it was pickled "
            f"by Python {sender} and this instance runs Python {THIS_PYTHON}"
        ) from exc


def _decode_request(data: Any, what: str, sender: str | None = None) -> RunnerRequest:
    """A pickled RunnerRequest (``what`` names it in errors), type-checked."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{what} is a {type(data).__name__}, not pickled bytes")
    if sender is None or sender == THIS_PYTHON:
        request = unpickle(data)  # the same Python: nothing to check
    else:
        request = _unpickle_from(data, what, sender)
    if not isinstance(request, RunnerRequest):
        raise TypeError(f"{what} holds a {type(request).__name__}, not a RunnerRequest")
    request.validate()
    return request


def _slot_value(slot: BatchSlot, earlier: list[tuple[bool, Any]]) -> Any:
    """The result of an earlier call of the batch, or its error raised again."""
    if not 0 <= slot.index < len(earlier):
        raise ValueError(f"a batched call refers to call {slot.index}, which has not run")
    ok, value = earlier[slot.index]
    if not ok:
        raise value
    return value


class RunpyService(FlameService):
    """Runs the execution object of a Runner session."""

    def __init__(self) -> None:
        self._context: RunnerContext | None = None
        self._client_python: str | None = None
        self._object: Any = None
        self._ref: ObjectRef | None = None
        self._prefix = ""
        self._wrote_last = False
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="flmrun-fetch")
        self._state_lock = threading.Lock()  # held while calls run (see Checkpointer)
        self._checkpoints = Checkpointer(self._state_lock)

    # -- session ------------------------------------------------------------------------

    def on_session_enter(self, context: SessionContext) -> None:
        common_data = context.common_data()
        if common_data is None:
            raise ValueError("Common data is None in session context")
        self._ensure_package(context)
        self._ref = ObjectRef.decode(common_data)
        self._load_context(self._ref, first=True)
        # What was just loaded is the cache's copy: the first call need not load it
        # again (which would build a class's object a second time).
        self._wrote_last = True
        self._prefix = f"{context.application.name}/{context.session_id}"

    def _ensure_package(self, context: SessionContext) -> None:
        url = context.application.url
        if not url or os.environ.get(PACKAGE_SRC_ENV):
            return  # nothing to install, or the executor manager installed it
        from flmrun._envs import hold_in_use
        from flmrun._selfinstall import install_from_url

        entries = install_from_url(context.application.name, url)
        hold_in_use(entries)
        for entry in reversed(entries):
            if entry not in sys.path:
                sys.path.insert(0, entry)

    def _load_context(self, ref: ObjectRef, first: bool = False) -> None:
        data = get_object(ref)
        if not isinstance(data, (bytes, bytearray)):
            value = data
        elif first:  # the client's Python is learnt once, from the service's code
            self._client_python = sender_python(data)
            value = _unpickle_from(data, "the service's code", self._client_python)
        else:
            value = unpickle(data)
        if not isinstance(value, RunnerContext):
            raise TypeError(f"common data holds a {type(value).__name__}, not a RunnerContext")
        self._context = value
        directory = getattr(value, OUTPUT_ATTRIBUTE, None) if first else None
        if isinstance(directory, str) and directory:
            OUTPUT.start(directory)  # before the object is built: __init__ may print
        obj = value.execution_object
        self._object = obj() if isinstance(obj, type) else obj

    def on_session_leave(self) -> None:
        OUTPUT.stop()
        if not self._checkpoints.flush():
            log.warning("the newest state of the session's object was not saved at leave")
        self._context = None
        self._object = None
        self._ref = None

    # -- tasks --------------------------------------------------------------------------

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        with self._state_lock:
            try:
                return self._invoke(context)
            finally:
                OUTPUT.flush()  # a call's output reaches the cache before its result

    def _invoke(self, context: TaskContext) -> bytes | None:
        try:
            request = self._request(context)
            batch = getattr(request, BATCH_ATTRIBUTE, None)
            if batch is not None:
                return self._run_batch(request, batch)
            result = self._call(request, [])
            self._save_state()
        except TaskFailure:
            raise
        except Exception as exc:
            raise TaskFailure(exc, error_output(exc)) from exc
        return self._output(request, result)

    def _run_batch(self, head: RunnerRequest, rest: Any) -> bytes:
        """Run the calls of a batch in order; answer ``FLMB`` + their outputs.

        Each call fails on its own (its output is its ``FLME`` error); a call whose
        argument is a :class:`BatchSlot` of a failed call fails with that error.
        A batch of one failed call fails the task, as a single call does.
        """
        if not isinstance(rest, list):
            raise TypeError(f"{BATCH_ATTRIBUTE} holds a {type(rest).__name__}, not a list")
        outputs: list[bytes] = []
        results: list[tuple[bool, Any]] = []
        for i in range(len(rest) + 1):
            try:
                request = (
                    head
                    if i == 0
                    else _decode_request(rest[i - 1], "a batched call", self._client_python)
                )
                result = self._call(request, results)
                outputs.append(self._output(request, result))
                results.append((True, result))
            except Exception as exc:
                outputs.append(error_output(exc))
                results.append((False, exc))
        self._save_state()
        if len(outputs) == 1 and not results[0][0]:
            raise TaskFailure(results[0][1], outputs[0])
        self._fit(outputs, results)
        return BATCH_RESULT_MAGIC + pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)

    def _fit(self, outputs: list[bytes], results: list[tuple[bool, Any]]) -> None:
        """Keep a batch's output under :data:`OUTPUT_BUDGET`: the largest inline
        results go to the cache (their output becomes an ObjectRef), the largest
        errors are cut down."""
        total = sum(len(o) for o in outputs) + 16 * len(outputs)
        for i in sorted(range(len(outputs)), key=lambda k: -len(outputs[k])):
            if total <= OUTPUT_BUDGET:
                return
            ok, value = results[i]
            before = len(outputs[i])
            if ok and outputs[i].startswith(INLINE_RESULT_MAGIC):
                outputs[i] = put_object(self._prefix, value).encode()
            elif not ok:
                outputs[i] = error_output(value, limit=0)
            total += len(outputs[i]) - before

    def _call(self, request: RunnerRequest, earlier: list[tuple[bool, Any]]) -> Any:
        args, kwargs = self._resolve(request, earlier)
        return self._target(request.method)(*args, **kwargs)

    def _output(self, request: RunnerRequest, result: Any) -> bytes:
        """The result inline (when offered and small enough), else its ObjectRef;
        a value is encoded once either way."""
        limit = getattr(request, INLINE_ATTRIBUTE, 0)
        if isinstance(limit, int) and limit > 0 and size_hint(result) <= limit:
            if is_plain(result):  # the common case, without Arrow buffers
                body = pickle.dumps(result, protocol=PROTOCOL)
                if len(body) + 4 <= limit:
                    return INLINE_RESULT_MAGIC + MAGIC_PICKLE + body
            payload = encode_opaque(result)
            if payload.size <= limit:
                return INLINE_RESULT_MAGIC + bytes(payload.to_pybytes())
            if as_native(result) is None:
                return put_encoded(self._prefix, payload).encode()
        return put_object(self._prefix, result).encode()

    def _request(self, context: TaskContext) -> RunnerRequest:
        if self._context is None:
            raise RuntimeError("no session context: on_session_enter did not succeed")
        if context.input is None:
            raise ValueError("task input is missing")
        request = _decode_request(context.input, "this call", self._client_python)
        if self._context.stateful and self._ref is not None and not self._wrote_last:
            self._load_context(self._ref)  # the cache's copy is the source of truth
        return request

    def _resolve(
        self, request: RunnerRequest, earlier: list[tuple[bool, Any]]
    ) -> tuple[list[Any], dict[str, Any]]:
        args = list(request.args or ())
        kwargs = dict(request.kwargs or {})
        slots = find(kwargs, BatchSlot, find(args, BatchSlot))
        if slots:
            by_slot = {id(slot): _slot_value(slot, earlier) for slot in slots}
            args = replace(args, BatchSlot, by_slot)
            kwargs = replace(kwargs, BatchSlot, by_slot)
        for i, value in enumerate(args):
            if isinstance(value, bytes) and (ref := _bson_ref(value)) is not None:
                args[i] = ref
        for key, value in kwargs.items():
            if isinstance(value, bytes) and (ref := _bson_ref(value)) is not None:
                kwargs[key] = ref
        refs = find(kwargs, ObjectRef, find(args, ObjectRef))
        if not refs:
            return args, kwargs
        # Several are fetched at once; one is fetched here (no hop to a thread).
        values = [get_object(refs[0])] if len(refs) == 1 else list(self._pool.map(get_object, refs))
        fetched = {id(r): v for r, v in zip(refs, values, strict=True)}
        return replace(args, ObjectRef, fetched), replace(kwargs, ObjectRef, fetched)

    def _target(self, method: str | None) -> Any:
        if method is None:
            target = self._object
        else:
            target = getattr(self._object, method, None)
            if target is None:
                raise AttributeError(f"{type(self._object).__name__} has no method {method!r}")
        if not callable(target):
            raise TypeError(f"{method or 'the execution object'} is not callable")
        return target

    def _save_state(self) -> None:
        """Snapshot a stateful object after its calls; the checkpointer writes it to
        the cache (the source of truth between instances) off the reply's path."""
        context = self._context
        if context is None or not context.stateful or self._ref is None:
            return
        fresh = copy.copy(context)
        fresh.execution_object = self._object
        self._checkpoints.changed(self._ref, functools.partial(cloudpickle.dumps, fresh))
        self._context = fresh
        # This instance holds the only copy being written (a stateful object runs on
        # one instance), so the next call need not reload what it just stored.
        self._wrote_last = True


class Checkpointer:
    """Writes a stateful object's snapshots to the cache from a background thread.

    The worker calls :meth:`changed` after calls changed the state.  The
    checkpoint thread then takes a snapshot (under ``state_lock``, which the
    worker holds while a call runs, so a snapshot falls between calls) and
    writes it, at most once every ``interval`` seconds: a stream of calls costs
    one write per interval, not one per call, and neither the pickling nor the
    write is on a reply's path.  A state is in the cache at most ``interval``
    plus one write after the call that made it; :meth:`flush` (at session
    leave) writes the newest at once and waits for it.  A snapshot that cannot
    be taken or stored fails the next call that changes the state (as it failed
    the call itself when snapshots were taken on the reply's path), and the flush.
    """

    def __init__(self, state_lock: threading.Lock, interval: float = CHECKPOINT_INTERVAL) -> None:
        self._state_lock = state_lock
        self._interval = interval
        self._cond = threading.Condition()
        self._dirty: tuple[ObjectRef, Callable[[], bytes]] | None = None
        self._busy = False
        self._hurry = False
        self._last = -math.inf
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None

    def changed(self, ref: ObjectRef, snapshot: Callable[[], bytes]) -> None:
        """The state changed; ``snapshot()`` pickles it (called with the state lock).
        Raises if the previous snapshot could not be taken or stored."""
        with self._cond:
            was_clean = self._dirty is None
            self._dirty = (ref, snapshot)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="flmrun-checkpoint", daemon=True
                )
                self._thread.start()
            if was_clean:
                # Already dirty: the thread is waiting out the interval and takes the
                # newest snapshot then.  Waking it on every call would cost each call
                # a thread switch.
                self._cond.notify_all()
            self._raise_failure()

    def _main(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._dirty is not None:
                        wait = self._last + self._interval - time.monotonic()
                        if wait <= 0 or self._hurry:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                dirty, self._dirty = self._dirty, None
                self._busy = True
            try:
                ref, snapshot = dirty
                with self._state_lock:
                    data = snapshot()
                self._last = time.monotonic()
                update_object(ref, data)
            except BaseException as exc:
                log.exception("cannot store the state of the session's object")
                with self._cond:
                    self._failure = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float = CHECKPOINT_FLUSH_TIMEOUT) -> bool:
        """Write the newest state now and wait until it is stored; False if that
        took over ``timeout``."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(lambda: self._dirty is None and not self._busy, timeout)
            finally:
                self._hurry = False
            failed, self._failure = self._failure, None
            return done and failed is None

    def _raise_failure(self) -> None:
        failed, self._failure = self._failure, None
        if failed is not None:
            raise RuntimeError(
                f"the state of the session's object could not be saved: "
                f"{type(failed).__name__}: {failed}"
            ) from failed
