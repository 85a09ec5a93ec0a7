import pytest

from cloud.media.ranges import ByteRange, Unsatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 100)),
        ("bytes=100-199", ByteRange(100, 200)),
        ("bytes=900-", ByteRange(900, 1000)),
        ("bytes=-100", ByteRange(900, 1000)),
        ("bytes=-5000", ByteRange(0, 1000)),
        ("bytes=990-5000", ByteRange(990, 1000)),
        ("bytes=999-999", ByteRange(999, 1000)),
    ],
)
def test_a_single_range_selects_its_bytes_clamped_to_the_content(
    header: str, expected: ByteRange
) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(
    "header",
    [None, "bytes=0-1,5-9", "items=0-9", "bytes=9-2", "bytes=-", "bytes=a-b", "0-99", ""],
)
def test_a_header_that_is_not_one_readable_range_is_ignored(header: str | None) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0), ("bytes=-5", 0)],
)
def test_a_range_that_selects_no_byte_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_content_range_names_the_inclusive_bytes_and_the_size() -> None:
    assert ByteRange(100, 200).content_range(1000) == "bytes 100-199/1000"
    assert ByteRange(100, 200).length == 100
