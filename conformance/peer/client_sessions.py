"""Peer scenario: sessions and tasks on our session manager, run by our ``flmtest`` app.

Input: ``{"session": id, "created": id, "absent": id}``.  ``flmtest`` echoes its
input as ``b"echo:" + input`` and fails a task whose input is ``b"fail:<text>"``.
"""

from __future__ import annotations

from typing import Any

from _common import attempt, emit, enum_value, error_of, hexed, read_input, task_dict

import flamepy
from flamepy import SessionAttributes


def session_dict(session: Any) -> dict[str, Any]:
    return {
        "id": session.id,
        "application": session.application,
        "state": enum_value(session.state),
        "pending": session.pending,
        "running": session.running,
        "succeed": session.succeed,
        "failed": session.failed,
        "has_completion_time": session.completion_time is not None,
        "common_data": hexed(session.common_data()),
    }


def main() -> None:
    given = read_input()
    sid = given["session"]
    session = flamepy.create_session(
        "flmtest", common_data=b"common-bytes", session_id=sid, min_instances=0, max_instances=2
    )
    created = session_dict(session)
    reopened = flamepy.open_session(sid)
    matching = attempt(
        lambda: (
            flamepy.open_session(
                sid, SessionAttributes(application="flmtest", min_instances=0, max_instances=2)
            ).id
        )
    )
    mismatch = attempt(
        lambda: flamepy.open_session(
            sid, SessionAttributes(application="flmtest", min_instances=0, max_instances=5)
        )
    )
    absent = attempt(lambda: flamepy.open_session(given["absent"]))
    created_by_open = flamepy.open_session(
        given["created"], SessionAttributes(application="flmtest", common_data=b"via-open")
    )
    opened_new = session_dict(created_by_open)
    created_by_open.close()

    echoed = session.invoke(b"abc")
    future = session.run(b"xyz")
    ran = future.result(timeout=60)
    invoke_failure = attempt(lambda: session.invoke(b"fail:boom"))

    failing = session.create_task(b"fail:watched")
    watched = [task_dict(t) for t in session.watch_task(failing.id)]
    fetched_failure = task_dict(session.get_task(failing.id))

    succeeding = session.create_task(b"watch-me")
    watched_ok = [task_dict(t) for t in session.watch_task(succeeding.id)]

    listed = [task_dict(t) for t in session.list_tasks()]
    counters = session_dict(flamepy.get_session(sid))
    in_list = sid in [s.id for s in flamepy.list_sessions()]
    flamepy.close_session(sid)
    closed = session_dict(flamepy.get_session(sid))
    try:
        session.create_task(b"too late")
        after_close: dict[str, Any] = {"ok": True}
    except Exception as exc:
        after_close = {"ok": False, "error": error_of(exc)}

    emit(
        {
            "created": created,
            "reopened": session_dict(reopened),
            "open_matching": matching,
            "open_mismatch": mismatch,
            "open_absent": absent,
            "opened_new": opened_new,
            "echoed": hexed(echoed),
            "ran": hexed(ran),
            "invoke_failure": invoke_failure,
            "watched_failure": watched,
            "fetched_failure": fetched_failure,
            "watched_success": watched_ok,
            "listed": listed,
            "counters": counters,
            "in_list": in_list,
            "closed": closed,
            "create_after_close": after_close,
        }
    )


if __name__ == "__main__":
    main()
