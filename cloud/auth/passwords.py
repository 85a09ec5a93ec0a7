"""Password hashing (argon2id, OWASP parameters) and the strength rule.

Hashing costs ~20 ms of CPU, so it always runs in a worker thread: the event loop keeps
serving WebSockets while logins are checked. Unknown accounts are verified against a dummy
hash so that response time does not reveal which emails are registered.
"""

import asyncio
import unicodedata

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 128

# The most common passwords of at least MIN_LENGTH characters in public breach corpora.
COMMON = frozenset(
    (
        "1234567890",
        "0123456789",
        "1234567891",
        "1111111111",
        "0000000000",
        "123456789a",
        "a123456789",
        "qwertyuiop",
        "1q2w3e4r5t",
        "1qaz2wsx3edc",
        "qwerty1234",
        "qwerty12345",
        "password12",
        "password123",
        "password1234",
        "passw0rd123",
        "iloveyou12",
        "abcdefghij",
        "abcd123456",
        "asdfghjkl1",
        "zxcvbnm123",
        "1234qwerty",
        "12345qwert",
        "princess12",
        "football12",
        "baseball12",
        "superman12",
        "welcome123",
        "welcome1234",
        "letmein123",
        "changeme123",
        "administrator",
        "admin12345",
        "trustno1234",
        "sunshine12",
        "monkey1234",
        "dragon1234",
        "michael123",
        "jennifer12",
        "11111111111",
        "123123123123",
        "987654321a",
        "qwertyuiop1",
        "1234567890a",
        "passwordpassword",
        "camera1234",
        "camera12345",
    )
)


class WeakPassword(ValueError):
    pass


def check_strength(password: str, email: str) -> None:
    """Refuse short, common, single-character or email-derived passwords (NIST 800-63B)."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"the password must have at most {MAX_LENGTH} characters")
    folded = unicodedata.normalize("NFKC", password).casefold()
    if folded in COMMON:
        raise WeakPassword("this password is one of the most common ones; choose another")
    if len(set(folded)) < 4:
        raise WeakPassword("the password needs at least 4 different characters")
    local = email.split("@", 1)[0].casefold()
    if len(local) >= 4 and local in folded:
        raise WeakPassword("the password must not contain your email address")


class Passwords:
    def __init__(self, time_cost: int = 2, memory_cost_kib: int = 19 * 1024) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=1, type=Type.ID
        )
        self._dummy = self._hasher.hash("dummy password for unknown accounts")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and bool(
                password_hash
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)
