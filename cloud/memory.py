"""Large blocks go back to the system when freed.

Each password hash (Argon2id, cloud/auth/passwords.py) takes 19 MiB in a worker thread.
glibc serves a block that large with mmap and unmaps it when freed, but then raises its
mmap threshold to the freed size (its "dynamic" threshold), so every later hash is served
from the thread's malloc arena, which keeps the memory once freed: with the default pool
of 6 worker threads a burst of sign-ins left an instance 114 MiB larger for good (the
soak's RSS after a password-change burst). Setting the threshold explicitly turns the
dynamic one off. Measured with 12 hashes at once, three times: RSS 21 -> 135 MiB and
stays, against 21 -> 21 MiB with the threshold set (bench figures in docs/benchmarks.md).
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.info("no glibc mallopt: large blocks stay with the C allocator's own policy")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
