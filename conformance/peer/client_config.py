"""Peer scenario: where the peer takes its endpoints from (env, flame.yaml or nothing).

Lists the applications, or records how the peer fails when nothing is configured.
"""

from __future__ import annotations

from _common import attempt, emit

import flamepy


def main() -> None:
    emit({"applications": attempt(lambda: sorted(a.name for a in flamepy.list_applications()))})


if __name__ == "__main__":
    main()
