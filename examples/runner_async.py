"""The same with asyncio: ``AsyncRunner`` and awaitable futures.

uv run python examples/runner_async.py
"""

import asyncio

from flamepy import AsyncRunner


def sum(a: int, b: int) -> int:
    return a + b


class Counter:
    def __init__(self, c: int = 0) -> None:
        self._count = c

    def add(self, a: int) -> None:
        self._count += a

    def get_counter(self) -> int:
        return self._count


async def main() -> None:
    async with AsyncRunner("test-async") as rr:
        print(await rr.service(sum)(1, 2))  # 3
        c = rr.service(Counter)
        c.add(1)
        c.add(3)
        print(await c.get_counter())  # 4
        o = rr.service(Counter(10))
        o.add(1)
        o.add(3)
        r = o.get_counter()
        print(await r)  # 14
        o.add(r)
        print(await o.get_counter())  # 28
        squares = [rr.service(pow)(i, 2) for i in range(5)]
        print(await rr.get(squares))  # [0, 1, 4, 9, 16]


if __name__ == "__main__":
    asyncio.run(main())
