"""The Runner in one ``with`` block: functions, classes and objects run remotely.

With no cluster configured this runs on an embedded local cluster:
    uv run python examples/runner_hello.py
It prints 3, 4, 14 and 28.
"""

from flamepy import Runner


def sum(a: int, b: int) -> int:
    return a + b


class Counter:
    def __init__(self, c: int = 0) -> None:
        self._count = c

    def add(self, a: int) -> None:
        self._count += a

    def get_counter(self) -> int:
        return self._count


if __name__ == "__main__":
    with Runner("test") as rr:
        print(rr.service(sum)(1, 2).get())  # 3
        c = rr.service(Counter)  # a class: instantiated on the executor
        c.add(1)
        c.add(3)
        print(c.get_counter().get())  # 4
        o = rr.service(Counter(10))  # an instance: its state lives on one executor
        o.add(1)
        o.add(3)
        r = o.get_counter()
        print(r.get())  # 14
        o.add(r)  # a future passed as an argument
        print(o.get_counter().get())  # 28
