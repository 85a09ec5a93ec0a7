from collections.abc import AsyncIterator

import pytest

from cloud.errors import TooLarge, UnsupportedMediaType
from cloud.media.intake import Intake

MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def drain(intake: Intake, got: list[bytes] | None = None) -> bytes:
    """Everything ``intake`` lets through, also appended to ``got`` as it comes."""
    got = [] if got is None else got
    async for chunk in intake:
        got.append(chunk)
    return b"".join(got)


async def test_a_video_passes_through_whole_with_its_type_found_from_tiny_pieces() -> None:
    data = MP4 + bytes(range(256)) * 4
    intake = Intake(
        body(*[data[i : i + 3] for i in range(0, len(data), 3)]),
        10_000,
        TooLarge("x"),
        ("video/mp4",),
    )
    assert await drain(intake) == data
    assert (intake.content_type, intake.size) == ("video/mp4", len(data))


async def test_a_short_video_is_judged_at_its_end() -> None:
    intake = Intake(body(MP4[:20]), 10_000, TooLarge("x"), ("video/mp4",))
    assert await drain(intake) == MP4[:20]


async def test_no_byte_of_a_body_that_is_not_an_accepted_video_gets_through() -> None:
    for data, accept in [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, ("video/mp4",)),
        (b"", ("video/mp4",)),
        (MP4 + b"\x00" * 100, ("video/webm",)),
    ]:
        got: list[bytes] = []
        with pytest.raises(UnsupportedMediaType):
            await drain(Intake(body(data), 10_000, TooLarge("x"), accept), got)
        assert got == []


async def test_the_callers_error_is_raised_as_soon_as_the_count_passes_the_limit() -> None:
    error = TooLarge("over")
    intake = Intake(
        body(MP4 + b"\x00" * 60, b"\x00" * 100, b"\x00" * 100), 200, error, ("video/mp4",)
    )
    got: list[bytes] = []
    with pytest.raises(TooLarge) as raised:
        await drain(intake, got)
    assert raised.value is error
    assert sum(map(len, got)) <= 200
