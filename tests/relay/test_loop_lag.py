import asyncio
import time

from relay.loop_lag import LoopLag


async def test_a_blocked_loop_shows_in_the_lag_and_an_idle_one_does_not() -> None:
    lag = LoopLag(period_s=0.01, window=1000)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.3)
    idle = lag.summary()
    time.sleep(0.25)  # noqa: ASYNC251 (the point: something holding the loop)
    await asyncio.sleep(0.05)
    task.cancel()
    blocked = lag.summary()
    assert idle["p50_ms"] < 50  # scheduling noise only (a 2-core machine, under load)
    assert blocked["max_ms"] >= 200  # the whole block: a wake-up was due during it
    assert LoopLag().summary() == {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
