"""The relay watching one camera: one aiortc connection per camera, receiving its video.

:class:`Upstream` is shared by every viewer of the camera served here and by its analysis:
the camera's packets reach them through one :class:`~relay.media.Fanout`, so a second
viewer or an analysed camera adds no connection to the camera. The node
(:mod:`relay.node`) decides when an upstream opens and closes (its own ``session.request``,
a grace period once nobody needs it); this module holds its state and what it does on its
own: wait for the camera's codec, and close.
"""

import asyncio
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from peer import codecs
from peer.ice import RemoteCandidates
from relay.media import Fanout


@dataclass
class Upstream:
    """The relay watching one camera, shared by every viewer of it here."""

    device_id: str
    fanout: Fanout
    request_id: str
    session_id: str | None = None
    pc: RTCPeerConnection | None = None
    viewers: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: asyncio.TimerHandle | None = None
    codec: codecs.VideoCodec | None = None  # what the camera answered with, once it has
    negotiated: asyncio.Event = field(default_factory=asyncio.Event)
    remote: RemoteCandidates = field(default_factory=lambda: RemoteCandidates("upstream"))

    async def codec_within(self, timeout_s: float) -> codecs.VideoCodec | None:
        """The camera's codec, once its answer came (None if it did not within the time)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.negotiated.wait()
        except TimeoutError:
            return None
        return self.codec

    async def close(self) -> None:
        """Cancel its tasks (the analysis, the connect deadline) and wait for them, then close
        the fan-out (its viewers' tracks end) and the connection to the camera."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.fanout.close()
        if self.pc is not None:
            await self.pc.close()
