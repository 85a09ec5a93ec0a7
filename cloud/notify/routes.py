"""The notification feature's endpoints and its start (cloud.app wires both in)."""

from typing import Any

from beanie import init_beanie
from pymongo.asynchronous.database import AsyncDatabase

from cloud.http import Endpoint
from cloud.notify import notifier, preferences, push, webhooks
from cloud.notify.models import DOCUMENTS
from cloud.notify.notifier import Notifier, start_notifier
from cloud.settings import Settings

ENDPOINTS: list[Endpoint] = [
    *push.ENDPOINTS,
    *preferences.ENDPOINTS,
    *webhooks.ENDPOINTS,
    *notifier.ENDPOINTS,
]


async def start(settings: Settings, database: AsyncDatabase[dict[str, Any]]) -> Notifier:
    """Its documents, the VAPID key, and this instance's outbox worker."""
    await init_beanie(database=database, document_models=DOCUMENTS)
    return await start_notifier(settings)
