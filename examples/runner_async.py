"""The same with asyncio: ``AsyncRunner`` and awaitable futures.

uv run python examples/runner_async.py

``await service(...)`` gives the finished call as an ``ObjectResult``: ``.get()``
is its value, and passed to another call it travels by reference (the data stays
in the cache).  ``await service(...).get()`` gives the value in one step.
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
        sum_s = rr.service(sum)
        res_r = await sum_s(1, 2)  # the seed's shape: an ObjectResult ...
        print(res_r.get())  # 3   ... whose get() is the value
        print(await sum_s(res_r, 4).get())  # 7: passed by reference, then one step
        c = rr.service(Counter)
        c.add(1)
        c.add(3)
        print(await c.get_counter().get())  # 4
        o = rr.service(Counter(10))
        o.add(1)
        o.add(3)
        r = o.get_counter()
        print((await r).get())  # 14
        o.add(r)
        print(await o.get_counter().get())  # 28
        squares = [rr.service(pow)(i, 2) for i in range(5)]
        print(await rr.get(squares))  # [0, 1, 4, 9, 16]


if __name__ == "__main__":
    asyncio.run(main())
