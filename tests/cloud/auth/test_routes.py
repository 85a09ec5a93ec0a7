import asyncio

import httpx
import jwt
import pytest

from cloud.auth import tokens
from cloud.settings import Settings
from tests.conftest import PASSWORD, MakeAccount, unique_email


async def test_register_normalises_the_email_and_never_returns_the_password(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email("Mixed")
    r = await client.post(
        "/api/v1/auth/register", json={"email": email.upper(), "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    assert r.json()["email"] == email.lower()
    assert PASSWORD not in r.text
    again = await client.post(
        "/api/v1/auth/register", json={"email": email.lower(), "password": PASSWORD}
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "email_taken"


async def test_weak_passwords_are_refused_with_a_reason(client: httpx.AsyncClient) -> None:
    email = unique_email("weak")
    short = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": "Sh0rt-pw!"}
    )
    assert (short.status_code, short.json()["error"]["code"]) == (422, "invalid_request")
    for password in ["password123", "aaaaaaaaaaaa", "abababababab", email.split("@")[0] + "xyz!"]:
        r = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 422, password
        assert r.json()["error"]["code"] == "weak_password"
        assert password not in r.text


async def test_bad_bodies_get_the_documented_error_shapes(client: httpx.AsyncClient) -> None:
    url = "/api/v1/auth/register"
    r = await client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_request")
    r = await client.post(
        url, content=b"email=a", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
    r = await client.post(url, json={"email": "not-an-email", "password": PASSWORD})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    assert PASSWORD not in r.text
    r = await client.post(url, json={"email": "a@example.com", "password": "x" * 70000})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    r = await client.post(url, json=["a list"])
    assert r.status_code == 422
    r = await client.get("/api/v1/nowhere")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = await client.put("/api/v1/me")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_login_returns_a_token_pair_that_opens_me(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    assert account.tokens["token_type"] == "bearer"
    assert account.tokens["expires_in"] == 900
    me = await client.get("/api/v1/me", headers=account.headers)
    assert me.status_code == 200
    assert me.json()["email"] == account.email
    assert me.headers["cache-control"] == "private, no-store"
    assert len(me.headers["x-request-id"]) >= 8


async def test_wrong_password_and_unknown_account_look_the_same(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": "Nope-nope-nope-1"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": unique_email(), "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_access_tokens_are_checked_strictly(
    client: httpx.AsyncClient, make_account: MakeAccount, settings: Settings
) -> None:
    account = await make_account()
    good = jwt.decode(account.tokens["access_token"], options={"verify_signature": False})
    secret = settings.jwt_secret

    def forge(claims: dict[str, object], key: str = secret, alg: str = "HS256") -> str:
        return jwt.encode(claims, key, algorithm=alg)

    forged = [
        forge({**good, "exp": good["iat"] - 10}),  # expired
        forge({**good, "aud": "someone-else"}),
        forge({**good, "iss": "http://evil"}),
        forge({**good, "typ": "refresh"}),
        forge({k: v for k, v in good.items() if k != "typ"}),
        forge(good, key="another secret that is long enough to use"),
        forge(good, alg="HS512"),
        jwt.encode(good, None, algorithm="none"),
        account.tokens["refresh_token"],
        "",
    ]
    for token in forged:
        r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get("/api/v1/me")).status_code == 401
    assert (
        await client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    ).status_code == 401
    assert (await client.get("/api/v1/me", headers=account.headers)).status_code == 200


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    first = account.tokens["refresh_token"]
    r1 = await refresh(client, first)
    assert r1.status_code == 200
    second = r1.json()["refresh_token"]
    assert second != first
    me = await client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {r1.json()['access_token']}"}
    )
    assert me.status_code == 200
    # The answer was lost (a 503 after the rotation landed): the app's retry gets the
    # same successor back, not a second one and not a sign-out.
    retry = await refresh(client, first)
    assert (retry.status_code, retry.json()["refresh_token"]) == (200, second), retry.text
    third = (await refresh(client, second)).json()["refresh_token"]
    # Once the successor is used, the first token again is reuse: refused, and the
    # legitimate chain dies too.
    replay = await refresh(client, first)
    assert replay.status_code == 401
    assert (await refresh(client, third)).status_code == 401
    # Another login of the same user is a separate family and keeps working.
    login = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert (await refresh(client, login.json()["refresh_token"])).status_code == 200


async def test_a_rotated_token_after_the_reuse_interval_revokes_the_family(
    client: httpx.AsyncClient, make_account: MakeAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await make_account()
    first = account.tokens["refresh_token"]
    second = (await refresh(client, first)).json()["refresh_token"]
    monkeypatch.setattr(tokens, "REUSE_INTERVAL_S", 0)  # the interval is over
    assert (await refresh(client, first)).status_code == 401
    assert (await refresh(client, second)).status_code == 401  # unused, but revoked


async def test_a_retry_cannot_outlive_its_sign_out(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    first = account.tokens["refresh_token"]
    assert (await refresh(client, first)).status_code == 200
    r = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": first}, headers=account.headers
    )
    assert r.status_code == 204
    assert (await refresh(client, first)).status_code == 401  # within the interval


async def test_concurrent_refreshes_of_one_token_keep_one_chain(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    token = account.tokens["refresh_token"]
    results = await asyncio.gather(*(refresh(client, token) for _ in range(10)))
    assert {r.status_code for r in results} == {200}
    successors = {r.json()["refresh_token"] for r in results}
    assert len(successors) == 1  # one head: the chain did not fork
    (successor,) = successors
    assert (await refresh(client, successor)).status_code == 200
    assert (await refresh(client, successor)).status_code == 200  # a retry, same answer
    assert (await refresh(client, token)).status_code == 401  # the successor was used


async def test_logout_revokes_the_refresh_token(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    other = await make_account()
    token = account.tokens["refresh_token"]
    # Another user cannot log this session out.
    r = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": token}, headers=other.headers
    )
    assert r.status_code == 404
    r = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": token}, headers=account.headers
    )
    assert r.status_code == 204
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": token})
    ).status_code == 401
    assert (
        await client.post("/api/v1/auth/logout", json={"refresh_token": token})
    ).status_code == 401


async def test_failed_logins_lock_the_account_for_a_while(
    client: httpx.AsyncClient, make_account: MakeAccount, settings: Settings
) -> None:
    account = await make_account()
    bad = {"email": account.email, "password": "Wrong-password-99"}
    for _ in range(settings.login_max_failures_per_account):
        assert (await client.post("/api/v1/auth/login", json=bad)).status_code == 401
    locked = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(locked.headers["retry-after"]) <= settings.login_window_s + 1


async def test_one_address_is_throttled_across_accounts(app: object, settings: Settings) -> None:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.77", 5555))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        statuses = []
        for _ in range(settings.login_max_attempts_per_address + 1):
            r = await c.post(
                "/api/v1/auth/login", json={"email": unique_email(), "password": PASSWORD}
            )
            statuses.append(r.status_code)
        assert statuses[:-1] == [401] * settings.login_max_attempts_per_address
        assert statuses[-1] == 429
    # Another address is unaffected.
    transport = httpx.ASGITransport(app=app, client=("192.0.2.78", 5555))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.post("/api/v1/auth/login", json={"email": unique_email(), "password": PASSWORD})
        assert r.status_code == 401
