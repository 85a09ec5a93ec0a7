"""The bus on Redis: pub/sub between instances, presence and one-time claims in keys.

Everything sits under the bus name N (default ``vc``), so deployments can share a Redis::

    channel  N:<channel>              pub/sub, JSON text
    string   N:presence:<device>      the holder, with PX expiry
    zset     N:presence-expiry        device -> expiry in ms of the Redis clock
    string   N:once:<key>             SET NX PX

Commands use a pool with socket timeouts, one immediate retry (a pooled connection may have
died with a Redis restart) and an overall deadline, so a call fails with BusUnavailable
within ``CALL_TIMEOUT_S`` instead of hanging. PUBLISH, one per signaling message, and the
one-line commands of every camera connect (claiming its assertion's ``jti``, setting its
presence) go pipelined on a connection of its own (:mod:`cloud.signaling.redis_publisher`),
never retried, and fail within twice ``SOCKET_TIMEOUT_S`` (connect, then reply).

Each instance holds one subscriber connection, read by one task: when it breaks, the task
reconnects with backoff (capped at ``BACKOFF_CAP_S``) and subscribes every held channel
again, without help from the caller.
What was published in between is lost (pub/sub is at most once); publishers saw it as a
count of 0 or as BusUnavailable. So that the loss is not silent, the gap listener
(``Bus.on_gap``) hears of it when the connection breaks, and again once a new one holds
every channel: the task sends a PING behind the SUBSCRIBE, and Redis answers in order.
A Redis restarted without persistence loses presence and one-time keys as well.

Scripts read the Redis clock, so instances never disagree about expiry. They compute key
names, which Redis Cluster forbids: this targets one Redis primary.
"""

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cloud.signaling.bus import (
    CLOSE_TIMEOUT_S,
    BusUnavailable,
    Deliveries,
    GapListener,
    Handler,
    Message,
)
from cloud.signaling.redis_publisher import NIL, Publisher, PublishFailed

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 2.5
BACKOFF_START_S = 0.05
BACKOFF_CAP_S = 2.0
_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

# Expiry is counted in ms of the Redis clock (TIME), the one clock all instances share.
SET_PRESENCE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
"""

CLEAR_PRESENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# A due entry whose key still lives was set again: it gets its new expiry back, unclaimed.
CLAIM_EXPIRED = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local claimed = {}
for _, device in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local pttl = redis.call('PTTL', ARGV[1] .. device)
  if pttl == -2 then
    redis.call('ZREM', KEYS[1], device)
    table.insert(claimed, device)
  elseif pttl == -1 then
    redis.call('ZREM', KEYS[1], device)
  else
    redis.call('ZADD', KEYS[1], now + pttl, device)
  end
end
return claimed
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBus:
    """The bus for any number of instances sharing the Redis at ``url``."""

    def __init__(self, url: str, *, name: str = "vc") -> None:
        self.name = name
        self._id = f"{name}/{secrets.token_hex(3)}"
        # A blocking pool: a burst of publishes waits for a connection instead of failing
        # with "Too many connections" past redis-py's default of 100.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=SOCKET_TIMEOUT_S,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
            protocol=2,  # RESP3 (redis-py's default) would turn pub/sub replies into pushes
        )
        self._redis = Redis(connection_pool=pool)
        # The hot path, a publish per signaling message, skips the pool (redis_publisher).
        self._publisher = Publisher(
            url, connect_timeout_s=SOCKET_TIMEOUT_S, reply_timeout_s=SOCKET_TIMEOUT_S
        )
        self._clear_presence = self._redis.register_script(CLEAR_PRESENCE)
        self._claim_expired = self._redis.register_script(CLAIM_EXPIRED)
        self._deliveries = Deliveries(self._id)
        self._reader: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None  # the subscriber connection, while up
        self._connected = asyncio.Event()
        self._pending: dict[tuple[str, str], asyncio.Future[None]] = {}  # (kind, channel)
        self._running = False
        self._gap_listener: GapListener | None = None
        self._lost_at: float | None = None  # while a gap is not yet closed (see _read)
        self._gap_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the subscriber task; wait up to ``CALL_TIMEOUT_S`` for its first connection."""
        if self._running:
            return
        self._running = True
        self._reader = asyncio.create_task(self._read(), name=f"{self._id} subscriber")
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self._connected.wait()
        except TimeoutError:
            log.warning("%s: Redis unreachable at start; retrying in the background", self._id)

    async def close(self) -> None:
        self._running = False
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader}, timeout=CLOSE_TIMEOUT_S)
            self._reader = None
        for task in list(self._gap_tasks):
            task.cancel()
        if self._gap_tasks:
            await asyncio.wait(self._gap_tasks, timeout=CLOSE_TIMEOUT_S)
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result(None)  # its caller sees the bus closed
        self._pending.clear()
        self._publisher.close()
        await self._deliveries.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._redis.aclose()
        except (*_NETWORK_ERRORS, RedisError):
            log.debug("%s: error while closing the pool", self._id, exc_info=True)

    async def ping(self) -> bool:
        """Ready when commands answer and the subscriber connection is up."""
        if not self._running or not self._connected.is_set():
            return False
        try:
            return bool(await self._call("ping", lambda: self._redis.ping()))
        except BusUnavailable:
            return False

    async def publish(self, channel: str, message: Message) -> int:
        self._check_running()
        try:
            return await self._publisher.publish(self._channel(channel), json.dumps(message))
        except (PublishFailed, TimeoutError, OSError) as exc:
            raise BusUnavailable(f"{self._id}: Redis publish failed: {exc}") from exc

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._check_running()
        name = self._channel(channel)
        held = channel in self._deliveries
        self._deliveries.add(channel, handler)
        waiter = self._pending.get(("subscribe", name))
        if held and waiter is None:
            return  # already effective: only the handler changed
        if waiter is None:
            waiter = self._pending[("subscribe", name)] = asyncio.get_running_loop().create_future()
            await self._send("SUBSCRIBE", name)  # when down, the reader subscribes on reconnect
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await asyncio.shield(waiter)
        except TimeoutError as exc:
            if self._pending.get(("subscribe", name)) is waiter:
                del self._pending[("subscribe", name)]
            await self.unsubscribe(channel)
            raise BusUnavailable(f"{self._id}: Redis did not confirm SUBSCRIBE {name}") from exc
        self._check_running()

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._deliveries:
            return
        await self._deliveries.remove(channel)
        name = self._channel(channel)
        # Waiting for the confirmation keeps publish counts honest; after a failure the
        # reconnected connection holds only the channels still held, so it is not retried.
        waiter = self._pending[("unsubscribe", name)] = asyncio.get_running_loop().create_future()
        try:
            if await self._send("UNSUBSCRIBE", name):
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await asyncio.shield(waiter)
        except TimeoutError:
            log.warning("%s: Redis did not confirm UNSUBSCRIBE %s", self._id, name)
        finally:
            if self._pending.get(("unsubscribe", name)) is waiter:
                del self._pending[("unsubscribe", name)]

    def on_gap(self, listener: GapListener) -> None:
        self._gap_listener = listener

    async def set_presence(self, device_id: str, holder: str, ttl_s: float) -> None:
        # On the pipelined connection: one per camera connect and per refresh, ~5x cheaper
        # than through the pool. Never retried, but setting it twice does no harm anyway.
        keys = [self._presence_key(device_id), self._presence_index]
        await self._command(
            "set_presence",
            b"EVAL",
            SET_PRESENCE.encode(),
            b"2",
            *(k.encode() for k in keys),
            holder.encode(),
            str(_ms(ttl_s)).encode(),
            device_id.encode(),
        )

    async def clear_presence(self, device_id: str, holder: str) -> bool:
        keys = [self._presence_key(device_id), self._presence_index]
        cleared = await self._call(
            "clear_presence", lambda: self._clear_presence(keys, [holder, device_id])
        )
        return bool(cleared)

    async def presence(self, device_ids: Sequence[str]) -> dict[str, str | None]:
        if not device_ids:
            self._check_running()
            return {}
        keys = [self._presence_key(d) for d in device_ids]
        holders: list[str | None] = await self._call("presence", lambda: self._redis.mget(keys))
        return dict(zip(device_ids, holders, strict=True))

    async def claim_expired_presence(self, limit: int = 100) -> list[str]:
        prefix = self._presence_key("")
        claimed: list[str] = await self._call(
            "claim_expired_presence",
            lambda: self._claim_expired([self._presence_index], [prefix, limit]),
        )
        return claimed

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        # Never retried (a retry after a lost reply would find its own claim and say "taken"):
        # a failure is BusUnavailable, and the caller asks again with a fresh value.
        name = f"{self.name}:once:{key}"
        reply = await self._command(
            "claim_once", b"SET", name.encode(), b"1", b"NX", b"PX", str(_ms(ttl_s)).encode()
        )
        return reply != NIL

    def _channel(self, channel: str) -> str:
        return f"{self.name}:{channel}"

    def _presence_key(self, device_id: str) -> str:
        return f"{self.name}:presence:{device_id}"

    @property
    def _presence_index(self) -> str:
        return f"{self.name}:presence-expiry"

    def _check_running(self) -> None:
        if not self._running:
            raise BusUnavailable(f"{self._id}: the bus is not running")

    async def _call(self, what: str, command: Callable[[], Awaitable[Any]]) -> Any:
        self._check_running()
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await command()
        except _NETWORK_ERRORS as exc:
            raise BusUnavailable(f"{self._id}: Redis {what} failed: {exc}") from exc

    async def _command(self, what: str, *parts: bytes) -> int:
        """A one-line command on the pipelined connection (redis_publisher)."""
        self._check_running()
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await self._publisher.command(*parts)
        except (PublishFailed, TimeoutError, OSError) as exc:
            raise BusUnavailable(f"{self._id}: Redis {what} failed: {exc}") from exc

    async def _send(self, *command: str) -> bool:
        """Write on the subscriber connection if it is up; whether it was written."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return False  # and never reconnect it here: the reader owns reconnection
        try:
            await conn.send_command(*command, check_health=False)
        except _NETWORK_ERRORS:
            return False  # the reader sees the same failure and reconnects
        return True

    async def _read(self) -> None:
        """Own the subscriber connection: read it, and replace it whenever it breaks.

        A gap runs from the moment a connection breaks (``_lost_at``) until a new one holds
        every channel again, which the reply to a PING sent behind the SUBSCRIBE says
        (:meth:`_gap_closed`); a connection that breaks before that extends the same gap.
        """
        delay = BACKOFF_START_S
        up_once = False  # failures before the first connection lose nothing: no gap
        while True:
            # A bare connection, not a PubSub, so that reconnecting and resubscribing happen
            # here and nowhere else. (redis-py leaves make_connection and connect untyped.)
            pool = self._redis.connection_pool
            conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                channels = [self._channel(c) for c in self._deliveries.channels()]
                if channels:
                    await conn.send_command("SUBSCRIBE", *channels, check_health=False)
                if self._lost_at is not None:
                    await conn.send_command("PING", check_health=False)
                    log.info(
                        "%s: subscriber back after %.1f s; resubscribing %d channels",
                        self._id,
                        time.monotonic() - self._lost_at,
                        len(channels),
                    )
                self._connected.set()
                up_once, delay = True, BACKOFF_START_S
                while True:
                    self._on_reply(await conn.read_response(timeout=math.inf))
            except _NETWORK_ERRORS as exc:
                if self._lost_at is None and up_once:
                    log.warning("%s: subscriber connection down (%s); reconnecting", self._id, exc)
                    self._gap_began()
            except Exception:  # the reader must outlive any surprise, or the instance goes deaf
                log.exception("%s: subscriber connection failed; reconnecting", self._id)
                if self._lost_at is None and up_once:
                    self._gap_began()
            finally:
                self._conn = None
                self._connected.clear()
                await conn.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)

    def _gap_began(self) -> None:
        self._lost_at = time.monotonic()
        self._tell(self._lost_at, held=False)

    def _gap_closed(self) -> None:
        """Every channel is held again after a gap: tell the listener."""
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is None:
            return  # a PING of nobody's gap (there is no other sender of PING here)
        log.info(
            "%s: every channel held again, %.1f s after the loss",
            self._id,
            time.monotonic() - lost_at,
        )
        self._tell(lost_at, held=True)

    def _tell(self, lost_at: float, *, held: bool) -> None:
        """Call the gap listener in a task of its own: the reader never waits for it."""
        listener = self._gap_listener
        if listener is None or not self._running:
            return

        async def tell() -> None:
            try:
                await listener(lost_at, held)
            except Exception:
                log.exception("%s: the gap listener failed", self._id)

        task = asyncio.create_task(tell(), name=f"{self._id} gap")
        self._gap_tasks.add(task)
        task.add_done_callback(self._gap_tasks.discard)

    def _on_reply(self, reply: Any) -> None:
        match reply:
            case ["message", str(name), str(text)]:
                channel = name.removeprefix(f"{self.name}:")
                try:
                    message = json.loads(text)
                except ValueError:
                    log.warning("%s: dropped a message on %s that is not JSON", self._id, name)
                    return
                if not isinstance(message, dict):
                    log.warning("%s: dropped a message on %s that is not an object", self._id, name)
                    return
                self._deliveries.deliver(channel, message)
            case ["subscribe" | "unsubscribe" as kind, str(name), _]:
                waiter = self._pending.pop((kind, name), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            case ["pong", _] | "PONG":  # subscribed, or not (no channel held)
                self._gap_closed()
            case _:
                log.debug("%s: ignored %r on the subscriber connection", self._id, reply)
