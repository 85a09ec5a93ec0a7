"""The cloud serves the browser app itself: every asset, from this server, nothing from a CDN."""

import posixpath
import re

import httpx

from cloud.app import WEB_DIR

MODULE_IMPORT = re.compile(r'^\s*(?:import|export)\b[^"\']*?from\s+"([^"]+)"', re.M)
HTML_ASSET = re.compile(r'(?:src|href)="(/static/[^"]+)"')


async def test_the_app_page_is_served_at_the_root_with_a_strict_content_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<meta name="viewport"' in page.text


async def test_every_asset_the_app_loads_is_served_here_and_names_no_other_origin(
    client: httpx.AsyncClient,
) -> None:
    index = (await client.get("/")).text
    pending = set(HTML_ASSET.findall(index))
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        seen.add(path)
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-cache"
        assert "etag" in response.headers
        if path.endswith(".js"):
            assert "javascript" in response.headers["content-type"], path
            for target in MODULE_IMPORT.findall(response.text):
                assert target.startswith("."), f"{path} imports {target}"
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
                if resolved not in seen:
                    pending.add(resolved)
        if path.endswith((".js", ".css", ".svg")):
            # the SVG namespace is a name, not a request
            text = response.text.replace("http://www.w3.org/2000/svg", "")
            assert not re.search(r"https?://", text), f"{path} names another origin"
    static = WEB_DIR / "static"
    modules = {f"/static/{p.relative_to(static)}" for p in static.rglob("*.js")}
    assert modules <= seen  # no module left unreachable
    assert "/static/js/app.js" in seen


async def test_files_outside_the_static_folder_are_not_served(client: httpx.AsyncClient) -> None:
    for path in ("/static/../index.html", "/static/%2e%2e/%2e%2e/app.py", "/static/nope.js"):
        assert (await client.get(path)).status_code == 404, path
