"""A relay's detection budget (frames per second), shared fairly among its cameras.

YOLO is the relay's most expensive work (~50 ms of a core per frame at 320 px), so the relay
grants at most ``rate_per_s`` detections per second over all cameras. A camera asks before
each detection, ``try_acquire(camera_id, now)``, and is told yes or no at once: nothing
waits, a refused camera simply tries again with a later frame.

Fairness is max-min: every camera that is asking gets an equal share of the rate, and
what a camera does not use (it asks less often than its share) goes to the others. The
mechanism is a credit per camera (a deficit counter): time refills ``rate_per_s * dt``
credits, split equally among the active cameras; a camera banks at most ``burst + 1`` (its
next detection, the fraction it earns between two asks, and ``burst`` back-to-back
detections after a pause); its overflow is split again among those below the cap ("water
filling"), and what nobody can hold goes to a shared reserve, capped at ``burst``. A grant
costs one credit, from the camera's own credit first, then the reserve. The extra credit
in the cap matters: capped at exactly one, a busy camera would leak the fraction it earns
past one into the reserve, where whichever camera asks first picks it up.

So one busy camera cannot starve the others (it only ever gets its share plus what they
leave), the total never exceeds the rate (beyond the credit banked at the start), and a
camera that starts asking is served at once from the reserve when the relay has spare
capacity. A camera that has not asked for
``idle_after_s`` stops counting as active and its share goes back to the others; its
unused credit is dropped.

Pure: no clock, no I/O; ``now`` is any monotonic time in seconds. Not thread-safe: use it
from the event loop.
"""

from dataclasses import dataclass

_EPSILON = 1e-9  # credits are sums of float shares: 0.999999999 is a whole one


@dataclass
class _Camera:
    credit: float
    last_asked: float


class DetectionBudget:
    """``rate_per_s`` detections per second, shared fairly; see the module docstring."""

    def __init__(self, rate_per_s: float, *, burst: float = 1.0, idle_after_s: float = 2.0) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1.0:
            raise ValueError("burst must be at least 1 (one detection)")
        if idle_after_s <= 0:
            raise ValueError("idle_after_s must be positive")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.idle_after_s = idle_after_s
        self._cameras: dict[str, _Camera] = {}
        self._reserve = burst
        self._clock: float | None = None
        self.granted: dict[str, int] = {}
        """Grants per camera since creation (for stats and tests)."""

    @property
    def active_cameras(self) -> list[str]:
        """The cameras currently sharing the rate."""
        return list(self._cameras)

    def share(self) -> float:
        """Each active camera's guaranteed rate (detections/s) when all of them are busy."""
        return self.rate_per_s / max(1, len(self._cameras))

    def try_acquire(self, camera_id: str, now: float) -> bool:
        """Whether ``camera_id`` may run one detection now; a yes is used up at once."""
        camera = self._cameras.get(camera_id)
        if camera is None:
            camera = self._cameras[camera_id] = _Camera(credit=0.0, last_asked=now)
        camera.last_asked = max(camera.last_asked, now)
        self._advance(now)
        if camera.credit >= 1.0 - _EPSILON:
            camera.credit = max(0.0, camera.credit - 1.0)
        elif self._reserve >= 1.0 - _EPSILON:
            self._reserve = max(0.0, self._reserve - 1.0)
        else:
            return False
        self.granted[camera_id] = self.granted.get(camera_id, 0) + 1
        return True

    def forget(self, camera_id: str) -> None:
        """Remove a camera at once (it disconnected) instead of after ``idle_after_s``."""
        self._cameras.pop(camera_id, None)

    def _advance(self, now: float) -> None:
        """Expire idle cameras, then hand out the credit earned since the last call."""
        for camera_id, camera in list(self._cameras.items()):
            if now - camera.last_asked > self.idle_after_s:
                del self._cameras[camera_id]
        elapsed = 0.0 if self._clock is None else max(0.0, now - self._clock)
        self._clock = now if self._clock is None else max(self._clock, now)
        amount = self.rate_per_s * elapsed
        cap = self.burst + 1.0
        hungry = [c for c in self._cameras.values() if c.credit < cap]
        while amount > _EPSILON and hungry:
            portion = amount / len(hungry)
            amount = 0.0
            for camera in hungry:
                taken = min(portion, cap - camera.credit)
                camera.credit += taken
                amount += portion - taken
            hungry = [c for c in hungry if c.credit < cap - _EPSILON]
        self._reserve = min(self.burst, self._reserve + amount)
