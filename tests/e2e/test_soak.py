"""The soak under faults, shortened (issue 16, item 1): bench/soak.py's run with fewer cameras
and accounts and each fault mode briefly (kill -9 an instance, restart Redis, pause the
database, revocations, removals and password changes during live sessions). It fails on any
delivery to a principal without a grant, on any event, Web Push or webhook accepted and not
delivered, on a 5xx other than 503, on sessions not starting again after a fault, and on
resources not back at their baseline. About three minutes on the 2-core machine."""

from pathlib import Path

import pytest

from bench.soak import SoakConfig, run_soak


@pytest.mark.timeout(330)
def test_nothing_leaks_and_nothing_is_lost_under_faults(tmp_path: Path) -> None:
    result = run_soak(SoakConfig.short(), tmp_path)
    print(result.report())
    failures = result.failures()
    assert not failures, "\n".join(failures) + "\n\n" + result.report()
