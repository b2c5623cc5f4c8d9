"""Another local account attacking a local cluster (run by test_security.py as root).

It imports what it needs, then drops to ``nobody`` (uid and gid 65534, no groups)
for good, and only then tries each attack of the security issue.  It prints one
JSON object: attack name -> ``"ok"`` or ``"denied: <exception type>: <text>"``.

argv[1] is a JSON document: ``endpoint``, ``cache_endpoint``, ``key`` and
``version`` of a secret object, ``session_id`` of a victim's session, ``marker_app``
and ``marker_pickle`` (files the payloads would create), ``files`` (paths to read).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse

import grpc
import pyarrow.flight as flight

import flamepy._auth
import flamepy._cache.client
import flamepy._cache.codec
import flamepy._config
import flamepy.core.cache as cache
from flamepy.proto import frontend_pb2, frontend_pb2_grpc, types_pb2

NOBODY = 65534
TIMEOUT = 5.0


class Evil:
    """Unpickling this runs a shell command as whoever loads it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def drop_privileges() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    assert os.getresuid() == (NOBODY, NOBODY, NOBODY), os.getresuid()


def grpc_target(endpoint: str) -> str:
    if endpoint.startswith("unix://"):
        return "unix:" + endpoint[len("unix://") :]
    parts = urllib.parse.urlsplit(endpoint)
    return f"{parts.hostname}:{parts.port}"


def main() -> None:
    args = json.loads(sys.argv[1])
    drop_privileges()
    results: dict[str, str] = {}

    def attempt(name: str, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except grpc.RpcError as exc:
            results[name] = f"denied: {exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        except Exception as exc:
            results[name] = f"denied: {type(exc).__name__}: {exc}"
        else:
            results[name] = "ok"

    channel = grpc.insecure_channel(grpc_target(args["endpoint"]))
    stub = frontend_pb2_grpc.FrontendStub(channel)

    def register_and_run() -> None:
        spec = types_pb2.ApplicationSpec(
            command="/bin/sh", arguments=["-c", f"touch {args['marker_app']}"]
        )
        stub.RegisterApplication(
            frontend_pb2.RegisterApplicationRequest(name="evil", application=spec),
            timeout=TIMEOUT,
        )
        session = types_pb2.SessionSpec(application="evil", min_instances=1)
        stub.CreateSession(
            frontend_pb2.CreateSessionRequest(session_id="evil-1", session=session),
            timeout=TIMEOUT,
        )
        stub.CreateTask(
            frontend_pb2.CreateTaskRequest(
                task=types_pb2.TaskSpec(session_id="evil-1", input=b"x")
            ),
            timeout=TIMEOUT,
        )

    def list_sessions() -> None:
        reply = stub.ListSession(frontend_pb2.ListSessionRequest(), timeout=TIMEOUT)
        if not any(s.metadata.id == args["session_id"] for s in reply.sessions):
            raise LookupError("the victim's session is not listed")

    def list_tasks() -> None:
        request = frontend_pb2.ListTaskRequest(session_id=args["session_id"])
        if not list(stub.ListTask(request, timeout=TIMEOUT)):
            raise LookupError("no task listed")

    def unregister_flmrun() -> None:
        # Open sessions block it (as on a real cluster), so close them first.
        for session in stub.ListSession(
            frontend_pb2.ListSessionRequest(), timeout=TIMEOUT
        ).sessions:
            if session.spec.application == "flmrun" and session.status.state == types_pb2.Open:
                stub.CloseSession(
                    frontend_pb2.CloseSessionRequest(session_id=session.metadata.id),
                    timeout=TIMEOUT,
                )
        reply = stub.UnregisterApplication(
            frontend_pb2.UnregisterApplicationRequest(name="flmrun"), timeout=TIMEOUT
        )
        if reply.return_code != 0:
            raise RuntimeError(f"refused by the server: {reply.message}")

    location = flamepy._cache.client.flight_location(args["cache_endpoint"])
    client = flight.FlightClient(location)
    options = flight.FlightCallOptions(timeout=TIMEOUT)

    def list_flights() -> None:
        keys = [info.descriptor.path[0].decode() for info in client.list_flights(options=options)]
        if args["key"] not in keys:
            raise LookupError(f"the secret key is not listed: {keys}")

    def read_secret() -> None:
        ref = cache.ObjectRef(args["cache_endpoint"], args["key"], args["version"])
        value = cache.get_object(ref)
        if value != {"secret": "hunter2"}:
            raise LookupError(f"read something else: {value!r}")

    def overwrite_secret() -> None:
        ref = cache.ObjectRef(args["cache_endpoint"], args["key"], args["version"])
        cache.update_object(ref, Evil(args["marker_pickle"]))

    attempt("register_app_and_run_it", register_and_run)
    attempt("list_sessions", list_sessions)
    attempt("list_tasks", list_tasks)
    attempt("list_flights", list_flights)
    attempt("read_secret_object", read_secret)
    attempt("overwrite_object_with_pickle", overwrite_secret)
    attempt("unregister_flmrun", unregister_flmrun)
    for path in args["files"]:

        def read(path: str = path) -> None:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as fh:
                    fh.read(1)

        attempt(f"read {path}", read)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
