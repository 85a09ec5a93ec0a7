"""Password hashes' memory goes back to the system (cloud/memory.py): a burst of sign-ins
must not leave an instance larger for good. Each arm runs in a fresh interpreter: 12
Argon2id hashes at once, three times, through cloud.auth.passwords.Passwords."""

import subprocess
import sys

from tests.servers import ROOT

BURST = """
import asyncio, sys
from cloud.auth.passwords import Passwords
from cloud.memory import return_large_blocks

def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

async def main():
    if sys.argv[1] == "fixed":
        assert return_large_blocks()
    passwords = Passwords()
    before = rss_mib()
    for _ in range(3):
        await asyncio.gather(*(passwords.hash(f"correct horse {i}") for i in range(12)))
    print(rss_mib() - before)

asyncio.run(main())
"""


def grown_mib(arm: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", BURST, arm], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_a_burst_of_password_hashes_leaves_no_memory_behind() -> None:
    kept_by_default, kept = grown_mib("default"), grown_mib("fixed")
    # glibc's dynamic mmap threshold keeps ~19 MiB per worker thread (6 threads here: ~114)
    assert kept_by_default > 60, kept_by_default  # what the fix is for: the test can fail
    assert kept < 20, (kept, kept_by_default)
