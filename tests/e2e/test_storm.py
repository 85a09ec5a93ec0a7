"""A reconnect storm (issue 16 item 3), scaled down: the cameras of a killed instance are
all online again on the surviving instances within the bound.

Three cloud instances on one Redis and SecantusDB; simulated cameras (bench/storm.py, the
agent's backoff and jitter) connect to instance A, A is killed with SIGKILL, and presence as
the cloud keeps it (the holder in Redis, a newer epoch in the database) is followed until
every camera is held by B or C. ``bench/storm.py storm`` is the full-size run (10,000).
"""

from contextlib import ExitStack
from pathlib import Path

import pytest

from bench.storm import run_storm

CAMERAS = 800
BOUND_S = 30.0


@pytest.mark.timeout(300)
def test_cameras_of_a_killed_instance_are_all_online_on_the_survivors_in_time(
    mongodb_url: str, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        figures = run_storm(stack, tmp_path, mongodb_url, CAMERAS, instances=3, clients=1)
    shown = {k: v for k, v in figures.items() if k != "samples"}
    print(f"storm of {CAMERAS}: {shown}")
    assert figures["connected"] == CAMERAS
    assert figures["all_online_s"] is not None, figures["samples"][-3:]
    assert figures["all_online_s"] <= BOUND_S
    assert figures["db_online_after_kill"] == CAMERAS
    # Both survivors took a share: the load balancer's spread, not one instance.
    assert len(figures["connects_per_instance"]) == 2
    for log in tmp_path.glob("storm-*.log"):
        assert "Traceback" not in log.read_text(), log.name
