import pytest

from cloud.media.formats import sniff

EBML_WEBM = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d42878104")
EBML_MKV = bytes.fromhex("1a45dfa3a34286810142f7810142f2810442f38108") + b"\x42\x82\x88matroska"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2", "video/mp4"),
        (b"\x00\x00\x00\x18ftypiso5\x00\x00\x02\x00iso6mp41", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "video/quicktime"),
        (b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat", "video/quicktime"),
        (EBML_WEBM, "video/webm"),
        (EBML_MKV, "video/x-matroska"),
    ],
)
def test_containers_are_recognised_by_their_first_bytes(head: bytes, expected: str) -> None:
    assert sniff(head + b"\x00" * 40) == expected


@pytest.mark.parametrize(
    "head",
    [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 60, b"GIF89a" + b"\x00" * 60, b"<html>" * 20, b"ftyp"],
)
def test_anything_else_is_not_a_video(head: bytes) -> None:
    assert sniff(head) is None
