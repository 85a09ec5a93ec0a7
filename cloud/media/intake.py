"""A request body on its way into the store: counted against a cap, its format checked.

``Intake`` is the async iterable handed to ``MediaStore.put``. It passes chunks through as
they arrive, raising the caller's ``too_large`` error the moment the count passes
``limit``, and ``UnsupportedMediaType`` once the first ``HEAD_BYTES`` (or the whole body,
if shorter) show no accepted video container. Raising inside ``put`` makes the store
remove the partial file, so a refused body leaves nothing behind. The first bytes are
held back until they are judged: nothing unchecked reaches the store.
"""

from collections.abc import AsyncIterable, AsyncIterator, Collection

from cloud.errors import CloudError, UnsupportedMediaType
from cloud.media.formats import HEAD_BYTES, sniff

VIDEO_FORMATS = "MP4, MOV, MKV or WebM"


class Intake:
    def __init__(
        self,
        body: AsyncIterable[bytes],
        limit: int,
        too_large: CloudError,
        accept: Collection[str],
    ) -> None:
        self._body = body
        self._limit = limit
        self._too_large = too_large
        self._accept = accept
        self.size = 0
        self.content_type: str | None = None

    def _judge(self, head: bytes) -> None:
        found = sniff(head)
        if found is None or found not in self._accept:
            raise UnsupportedMediaType(
                "the body is not a video this endpoint takes: send "
                + (VIDEO_FORMATS if len(self._accept) > 2 else " or ".join(self._accept))
            )
        self.content_type = found

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head = b""
        async for chunk in self._body:
            self.size += len(chunk)
            if self.size > self._limit:
                raise self._too_large
            if self.content_type is None:
                head += chunk
                if len(head) < HEAD_BYTES:
                    continue
                self._judge(head)
                chunk, head = head, b""
            yield chunk
        if self.content_type is None:
            self._judge(head)
            yield head
