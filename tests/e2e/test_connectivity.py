"""Connectivity across real NATs: cameras and viewers in homes of the NAT lab (tests/natlab.py).

One lab for the module: the cloud, coturn (STUN and TURN, UDP and TCP, the production
configuration), redis-server and a relay node on the public segment; a camera agent in a
home of every NAT type, and a viewer agent (the Python viewer) in another home of every type.
Each test is a cell of the matrix camera NAT x viewer NAT: one session, its route, selected
candidate pair, TURN transport and time to first frame, checked against what the two NATs
allow: peer to peer where one side has no NAT or both map independently of the endpoint,
through TURN everywhere else (over TCP where a home drops UDP), never a failure. The whole
matrix, several sessions per cell and impaired links are bench/connectivity.py's.

Every cell's figures are written to ``matrix.json`` in the lab's folder.
"""

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.natlab import (
    PASSWORD,
    RELAY_ADDRESS,
    TURN_ADDRESS,
    TURN_PORT,
    Camera,
    Home,
    Lab,
    Nat,
    ViewerAgent,
    natlab,
    probe_nat,
    unavailable,
)

MAX_TTFF_MS = 3000
CHROMIUM = "/usr/bin/chromium"
# Stock behaviour: no mDNS-disabling flag, no loopback candidates (nothing here is loopback).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Matrix:
    lab: Lab
    email: str
    cameras: dict[Nat, Camera]
    viewers: dict[Nat, ViewerAgent]
    results: list[dict[str, Any]] = field(default_factory=list)

    def home(self, side: str, nat: Nat) -> Home:
        return self.lab.homes[f"{side}-{nat}"]


@pytest.fixture(scope="module")
def matrix(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    reason = unavailable()
    # make test runs the suites in a loopback-only namespace (scripts/hermetic); elsewhere the
    # lab cannot be built, and this says so instead of passing silently.
    assert reason is None, f"{reason} (run: scripts/hermetic .venv/bin/pytest {__file__})"
    tmp = tmp_path_factory.mktemp("natlab")
    with natlab(tmp) as lab:
        for side in ("cam", "view"):
            for nat in Nat:
                lab.add_home(f"{side}-{nat}", nat)
        lab.start_services(mongodb_url)
        email, headers = lab.account()
        cameras = {
            nat: lab.start_camera(
                lab.homes[f"cam-{nat}"], lab.onboard(lab.homes[f"cam-{nat}"], headers, f"cam-{nat}")
            )
            for nat in Nat
        }
        viewers = {
            nat: lab.start_viewer(lab.homes[f"view-{nat}"], email, wait=False) for nat in Nat
        }
        lab.wait_online(headers, list(cameras.values()))
        for agent in viewers.values():
            agent.ready()
        result = Matrix(lab, email, cameras, viewers)
        try:
            yield result
        finally:
            (tmp / "matrix.json").write_text(json.dumps(result.results, indent=2))
            print(f"\nconnectivity cells ({tmp / 'matrix.json'}):")
            for cell in result.results:
                print(json.dumps(cell))


def test_each_home_behaves_as_its_nat_type_says(matrix: Matrix) -> None:
    """One socket in the home asks three public endpoints how they see it (mapping), then
    datagrams come from endpoints it did and did not send to (filtering)."""
    lab = matrix.lab
    seen = {nat: probe_nat(lab, matrix.home("cam", nat)) for nat in Nat}
    none = seen[Nat.NONE]
    home = matrix.home("cam", Nat.NONE)
    assert none.mapping == "none"  # every endpoint sees the host's own address and port
    assert {m[0] for m in none.mapped if m} == {home.address}
    assert none.filtering == "endpoint-independent"
    eim = seen[Nat.EIM]
    assert eim.mapping == "endpoint-independent", eim
    assert eim.filtering == "address-and-port-dependent", eim
    assert {m[0] for m in eim.mapped if m} == {matrix.home("cam", Nat.EIM).public_address}
    symmetric = seen[Nat.SYMMETRIC]
    assert symmetric.mapping == "address-and-port-dependent", symmetric
    assert symmetric.filtering == "address-and-port-dependent", symmetric
    blocked = seen[Nat.UDP_BLOCKED]
    assert blocked.mapping == "blocked", blocked
    assert blocked.turn_stun is None  # no STUN answer from coturn over UDP
    for nat in Nat:
        assert seen[nat].turn_tcp, nat  # TCP to coturn's port opens from every home
        if nat is not Nat.UDP_BLOCKED:
            assert seen[nat].turn_stun is not None, nat


def kinds(pair: dict[str, Any]) -> tuple[str, str]:
    return str(pair["local"]["type"]), str(pair["remote"]["type"])


# (camera's NAT, viewer's NAT, expected path): every NAT type on each side at least once,
# UDP blocked on either side.
CELLS = [
    (Nat.NONE, Nat.EIM, "direct"),
    (Nat.EIM, Nat.EIM, "direct"),  # hole punching: server-reflexive candidates from STUN
    (Nat.SYMMETRIC, Nat.NONE, "direct"),  # the public viewer learns a peer-reflexive one
    (Nat.EIM, Nat.SYMMETRIC, "turn"),
    (Nat.SYMMETRIC, Nat.SYMMETRIC, "turn"),
    (Nat.SYMMETRIC, Nat.UDP_BLOCKED, "turn over tcp: viewer"),
    (Nat.UDP_BLOCKED, Nat.EIM, "turn over tcp: camera"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("camera_nat", "viewer_nat", "expected"),
    CELLS,
    ids=[f"camera_{c}-viewer_{v}" for c, v, _ in CELLS],
)
def test_a_viewer_reaches_a_camera_across_these_nats(
    matrix: Matrix, camera_nat: Nat, viewer_nat: Nat, expected: str
) -> None:
    camera = matrix.cameras[camera_nat]
    viewer = matrix.viewers[viewer_nat]
    routers = {
        "camera": matrix.home("cam", camera_nat),
        "viewer": matrix.home("view", viewer_nat),
    }
    before = {side: home.counter("turn_tcp") for side, home in routers.items()}
    connected_before = len(camera.connected_pairs())
    result = viewer.watch(camera.device_id, mode="p2p", hold_s=1.0)
    assert result["ok"], result
    pair = result["pair"]
    camera_pair = camera.connected_pairs()[connected_before:]
    matrix.results.append(
        {
            "camera": camera_nat.value,
            "viewer": viewer_nat.value,
            "route": result["route"],
            "viewer_pair": kinds(pair),
            "protocol": pair["local"]["protocol"],
            "viewer_turn": result["turn"],
            "camera_pair": kinds(camera_pair[-1]) if camera_pair else None,
            "camera_turn": (
                camera_pair[-1]["local"].get("relay_protocol") if camera_pair else None
            ),
            "ttff_ms": result["ttff_ms"],
        }
    )
    assert result["route"] == "p2p"
    assert result["ttff_ms"] <= MAX_TTFF_MS, result
    assert result["frames"] > 0, result  # still playing a second later
    assert pair["local"]["protocol"] == pair["remote"]["protocol"] == "udp"
    local, remote = kinds(pair)
    assert camera_pair, camera.log.read_text()[-2000:]
    if expected == "direct":
        assert "relay" not in (local, remote), result
        assert kinds(camera_pair[-1])[0] != "relay", camera_pair
        if Nat.NONE not in (camera_nat, viewer_nat):  # both behind NATs: hole punching
            assert local == "host"
            assert remote in ("srflx", "prflx"), result
        return
    assert "relay" in (local, remote), result
    if expected == "turn over tcp: viewer":
        assert local == "relay", result
        # aioice's view: the allocation's transport to coturn is a TCP connection
        assert result["turn"] == {"protocol": "tcp", "server": f"{TURN_ADDRESS}:{TURN_PORT}"}
        assert pair["local"]["relay_protocol"] == "tcp"
        assert routers["viewer"].counter("turn_tcp") > before["viewer"]
        assert routers["viewer"].counter("udp_dropped") > 0
    elif expected == "turn over tcp: camera":
        assert remote == "relay", result
        assert kinds(camera_pair[-1])[0] == "relay", camera_pair
        assert camera_pair[-1]["local"]["relay_protocol"] == "tcp", camera_pair
        assert routers["camera"].counter("turn_tcp") > before["camera"]
        assert routers["camera"].counter("udp_dropped") > 0
    elif local == "relay":
        assert result["turn"]["protocol"] == "udp", result  # UDP works here: no TCP


@pytest.fixture(scope="module")
async def browser(
    matrix: Matrix, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Browser]:
    """Debian's Chromium in the symmetric-NAT viewer home (Playwright stays outside)."""
    assert shutil.which("chromium") is not None
    home = matrix.home("view", Nat.SYMMETRIC)
    launcher = tmp_path_factory.mktemp("chromium") / "chromium-in-home"
    launcher.write_text(f'#!/bin/sh\nexec {" ".join(home.host.command([CHROMIUM]))} "$@"\n')
    launcher.chmod(0o755)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(launcher), args=CHROMIUM_FLAGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


# Keeps every RTCPeerConnection the page makes, so that the test can read its statistics.
KEEP_PEER_CONNECTIONS = """
window.__connections = [];
window.RTCPeerConnection = class extends window.RTCPeerConnection {
  constructor(...args) { super(...args); window.__connections.push(this); }
};
"""
SELECTED_PAIR = """async () => {
  const pc = window.__connections[window.__connections.length - 1];
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      pair = stats.get(r.selectedCandidatePairId);
    }
  });
  if (!pair) return null;
  const side = (c) => ({type: c.candidateType, address: c.address, port: c.port,
                        protocol: c.protocol, relayProtocol: c.relayProtocol ?? null});
  return {local: side(stats.get(pair.localCandidateId)),
          remote: side(stats.get(pair.remoteCandidateId))};
}"""


@pytest.mark.timeout(120)
async def test_chromium_behind_a_symmetric_nat_watches_through_the_relay_node(
    matrix: Matrix, browser: Browser, tmp_path: Path
) -> None:
    """Stock Chromium hides its host candidates behind mDNS names; the public relay node
    learns its address from its checks (peer-reflexive) and the camera, behind a symmetric
    NAT too, reaches the relay node."""
    services = matrix.lab.services
    assert services is not None
    camera = matrix.cameras[Nat.SYMMETRIC]
    connected_before = len(camera.connected_pairs())
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.add_init_script(KEEP_PEER_CONNECTIONS)
    try:
        await page.goto(services.cloud_url)
        await page.get_by_label("Email").fill(matrix.email)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Cameras")).to_be_visible()
        await page.goto(f"{services.cloud_url}/#/live/{camera.device_id}?mode=relay")
        box = page.locator(".video-box")
        await expect(box).to_have_attribute("data-phase", "playing", timeout=30_000)
        await page.wait_for_function(
            "() => { const v = document.querySelector('.video-box video');"
            " return v.videoWidth === 320 && v.currentTime > 0.5; }",
            timeout=10_000,
        )
        route = await page.locator(".route").get_attribute("data-route")
        ttff_ms = int(await page.locator(".ttff").get_attribute("data-ms") or -1)
        pair = await page.evaluate(SELECTED_PAIR)
        await page.screenshot(path=str(tmp_path / "chromium-relay.png"))
    finally:
        await context.close()
    camera_pair = camera.connected_pairs()[connected_before:]
    matrix.results.append(
        {
            "camera": Nat.SYMMETRIC.value,
            "viewer": "symmetric (Chromium)",
            "route": route,
            "viewer_pair": (pair["local"]["type"], pair["remote"]["type"]) if pair else None,
            "protocol": pair["local"]["protocol"] if pair else None,
            "camera_pair": kinds(camera_pair[-1]) if camera_pair else None,
            "ttff_ms": ttff_ms,
        }
    )
    assert errors == []
    assert route == "relay"
    assert 0 < ttff_ms <= MAX_TTFF_MS
    assert pair is not None
    assert pair["remote"]["address"] == RELAY_ADDRESS
    assert pair["remote"]["type"] == "host"
    assert pair["local"]["protocol"] == "udp"
    # the relay node's upstream: the camera's selected pair ends at the relay node's address
    assert camera_pair, camera.log.read_text()[-2000:]
    assert camera_pair[-1]["remote"]["address"] == RELAY_ADDRESS
