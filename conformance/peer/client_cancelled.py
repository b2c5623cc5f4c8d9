"""Peer scenario: a task cancelled by closing its session (TaskState 4).

Input: ``{"application": name, "session": id}``; the application never gets an
instance (``max_instances=0``), so the task stays Pending until the close cancels it.
flamepy 0.6.0's TaskState has no value 4: this records how the peer fails on it.
"""

from __future__ import annotations

from _common import attempt, emit, read_input, task_dict

import flamepy
from flamepy import ApplicationAttributes


def main() -> None:
    given = read_input()
    flamepy.register_application(
        given["application"], ApplicationAttributes(command="/bin/false", max_instances=0)
    )
    session = flamepy.create_session(given["application"], session_id=given["session"])
    task = session.create_task(b"never runs")
    pending = task_dict(session.get_task(task.id))
    session.close()
    emit(
        {
            "task_id": task.id,
            "pending": pending,
            "watch": attempt(lambda: [task_dict(t) for t in session.watch_task(task.id)]),
            "get_task": attempt(lambda: task_dict(session.get_task(task.id))),
            "list_tasks": attempt(lambda: [task_dict(t) for t in session.list_tasks()]),
        }
    )


if __name__ == "__main__":
    main()
