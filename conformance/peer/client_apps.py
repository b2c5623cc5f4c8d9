"""Peer scenario: applications (register, get, list, unregister) on our session manager.

Input: ``{"keep": name, "drop": name, "working_directory": absolute path}``.  ``keep``
stays registered so the test can read our server's copy of the spec.
"""

from __future__ import annotations

from typing import Any

from _common import attempt, emit, enum_value, read_input

import flamepy
from flamepy import ApplicationAttributes, ApplicationSchema, Shim


def app_dict(app: Any) -> dict[str, Any]:
    schema = app.schema
    return {
        "id": app.id,
        "name": app.name,
        "state": enum_value(app.state),
        "shim": enum_value(app.shim),
        "image": app.image,
        "description": app.description,
        "labels": app.labels,
        "command": app.command,
        "arguments": app.arguments,
        "environments": app.environments,
        "working_directory": app.working_directory,
        "max_instances": app.max_instances,
        "delay_release": app.delay_release,
        "schema": None
        if schema is None
        else {"input": schema.input, "output": schema.output, "common_data": schema.common_data},
        "url": app.url,
        "installer": app.installer,
        "has_creation_time": app.creation_time is not None,
    }


def main() -> None:
    given = read_input()
    attrs = ApplicationAttributes(
        shim=Shim.HOST,
        image="registry.example/app:1",
        description="conformance application",
        labels=["conformance", "peer"],
        command="/bin/true",
        arguments=["--flag", "${FLAME_HOME}/x"],
        environments={"ALPHA": "1", "BETA": "two"},
        working_directory=given["working_directory"],
        max_instances=3,
        delay_release=7,
        schema=ApplicationSchema(input='{"type": "string"}', output='{"type": "object"}'),
        url="file:///nonexistent/package.tar.gz",
        installer="python",
    )
    flamepy.register_application(given["keep"], attrs)
    flamepy.register_application(given["drop"], {"command": "/bin/false"})
    duplicate = attempt(lambda: flamepy.register_application(given["keep"], attrs))
    bad_name = attempt(lambda: flamepy.register_application("bad/name", attrs))
    kept = flamepy.get_application(given["keep"])
    listed = sorted(a.name for a in flamepy.list_applications())
    flamepy.unregister_application(given["drop"])
    emit(
        {
            "kept": app_dict(kept),
            "dropped_before": given["drop"] in listed,
            "listed": listed,
            "dropped_after": flamepy.get_application(given["drop"]) is None,
            "missing_is_none": flamepy.get_application("no-such-application") is None,
            "duplicate": duplicate,
            "bad_name": bad_name,
            "unregister_missing": attempt(
                lambda: flamepy.unregister_application("no-such-application")
            ),
            "executors": len(flamepy.list_executors()),
            "nodes": [n.metadata.name for n in flamepy.list_nodes()],
        }
    )


if __name__ == "__main__":
    main()
