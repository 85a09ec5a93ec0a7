from unittest import mock

from beanie import PydanticObjectId

from cloud.media.tokens import ContentTokens

KEY = b"k" * 32
MEDIA, OTHER_MEDIA = PydanticObjectId(), PydanticObjectId()
ANA, BEN = PydanticObjectId(), PydanticObjectId()


def test_a_token_names_the_user_it_was_issued_to_for_its_item() -> None:
    tokens = ContentTokens(KEY, 300)
    assert tokens.verify(tokens.issue(MEDIA, ANA), str(MEDIA)) == ANA


def test_a_token_is_worth_nothing_for_another_item_another_key_or_once_expired() -> None:
    tokens = ContentTokens(KEY, 300)
    token = tokens.issue(MEDIA, ANA)
    assert tokens.verify(token, str(OTHER_MEDIA)) is None
    assert ContentTokens(b"x" * 32, 300).verify(token, str(MEDIA)) is None
    with mock.patch("cloud.media.tokens.time.time", return_value=10**10):
        assert tokens.verify(token, str(MEDIA)) is None


def test_changing_the_user_or_the_expiry_breaks_the_signature() -> None:
    tokens = ContentTokens(KEY, 300)
    user, expires, signature = tokens.issue(MEDIA, ANA).split(".")
    assert tokens.verify(f"{BEN}.{expires}.{signature}", str(MEDIA)) is None
    assert tokens.verify(f"{user}.{int(expires) + 3600}.{signature}", str(MEDIA)) is None
    for garbage in ("", "a.b.c", f"{user}.{expires}", f"{user}.-1.{signature}", "x" * 200):
        assert tokens.verify(garbage, str(MEDIA)) is None
