"""Video container formats, recognised by their first bytes, never by what the client says.

- ISO base media (MP4, MOV): a box header, size then type, ``ftyp`` first; brand ``qt  ``
  is QuickTime. Older QuickTime files may open with ``moov``, ``mdat``, ``wide``, ``free``
  or ``skip`` instead.
- Matroska and WebM: the EBML magic ``1A 45 DF A3``; the DocType in the header that
  follows says ``webm`` or ``matroska``.

``HEAD_BYTES`` is enough to decide: the EBML header with its DocType sits in the first
few dozen bytes.
"""

HEAD_BYTES = 64
EBML = b"\x1a\x45\xdf\xa3"
QUICKTIME_BOXES = (b"moov", b"mdat", b"wide", b"free", b"skip")
CLIP_TYPES = ("video/mp4", "video/webm")


def sniff(head: bytes) -> str | None:
    """The content type of a video whose first bytes are ``head``; None if not a video we take."""
    if head.startswith(EBML):
        return "video/webm" if b"webm" in head[:HEAD_BYTES] else "video/x-matroska"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if len(head) >= 8 and head[4:8] in QUICKTIME_BOXES:
        return "video/quicktime"
    return None
