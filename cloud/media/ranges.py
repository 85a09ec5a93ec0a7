"""HTTP ``Range: bytes=…`` for one range (RFC 9110, section 14), as a pure function.

``bytes=a-b`` (inclusive, ``b`` clamped to the end), ``bytes=a-`` (to the end) and
``bytes=-n`` (the last ``n``). A header this module cannot read — another unit, several
ranges, ``b < a``, garbage — is ignored and the whole content served (the RFC lets a
server ignore Range; players only ever send one range). A readable range that selects
nothing (``a`` at or past the end, ``-0``, anything of an empty file) is unsatisfiable: 416.
"""

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")


@dataclass(frozen=True)
class ByteRange:
    start: int  # first byte
    end: int  # one past the last byte

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


class Unsatisfiable(ValueError):
    """The range selects no byte of the content."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks for in content of ``size`` bytes; None: serve it all."""
    if header is None:
        return None
    match = _SINGLE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    end = size if last == "" else min(int(last) + 1, size)
    return ByteRange(start, end)
