"""Peer scenario: the peer's core client drives a service written against 0.6's
service-author names and served by our flmrun.

Input: ``{"application": name, "common_data": hex}``.
"""

from __future__ import annotations

from _common import attempt, emit, read_input

import flamepy


def main() -> None:
    given = read_input()
    session = flamepy.create_session(
        given["application"], common_data=bytes.fromhex(given["common_data"])
    )
    try:
        hello = session.invoke(b"hello")
        failed = attempt(lambda: session.invoke(b"fail"))
    finally:
        session.close()
    emit({"session": session.id, "hello": hello.hex(), "failed": failed})


main()
