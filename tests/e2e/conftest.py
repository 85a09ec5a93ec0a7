from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import Cluster, running_cluster


@pytest.fixture
def cluster(mongodb_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(mongodb_url, tmp_path) as c:
        yield c


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.a.http, timeout=10) as client:
        yield client
