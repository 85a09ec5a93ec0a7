"""The senders' cache of target documents read just now."""

from beanie import PydanticObjectId

from cloud.notify.models import Webhook
from cloud.notify.recent import Recent
from cloud.notify.rounds import ROUND_S, now


async def test_targets_read_just_now_serve_a_round_and_one_found_gone_is_dropped(
    paused: None,
) -> None:
    recent: Recent[Webhook] = Recent()
    kept, gone = (
        Webhook(
            id=PydanticObjectId(),
            user_id=PydanticObjectId(),
            url="http://127.0.0.1:9/hook",
            created_at=now(),
        )
        for _ in range(2)
    )
    assert kept.id is not None
    assert gone.id is not None
    recent.keep([kept, gone])
    assert recent.missing([kept.id, gone.id]) == []
    assert recent.get(kept.id) is kept
    assert recent.get(kept.id, within=-1) is None  # read longer ago than the caller trusts
    recent.refresh([kept.id, gone.id], [kept])  # read again: one was deleted meanwhile
    assert recent.get(gone.id, ROUND_S) is None
    assert recent.get(kept.id) is kept
    assert recent.missing([kept.id, gone.id]) == [gone.id]
