"""A loop-heavy asyncio program for the doctor's overhead: 100,000 tiny tasks,
1,000 at a time, each yielding once. Prints the seconds its loop took."""

import asyncio
import sys
import time


async def tiny(i: int) -> int:
    await asyncio.sleep(0)
    return i


async def main(n: int) -> None:
    for start in range(0, n, 1000):
        await asyncio.gather(*(tiny(i) for i in range(start, start + 1000)))


began = time.perf_counter()
asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
print(time.perf_counter() - began)
