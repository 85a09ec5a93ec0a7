"""Connectivity across NATs: every camera NAT x viewer NAT, and sessions on an impaired link.

    scripts/hermetic .venv/bin/python bench/connectivity.py [--sessions 3]
        [--impaired-sessions 3] [--hold-s 10] [--loss 5] [--rtt-ms 150]
        [--only matrix|impaired] [--logs DIR]

Runs in a loopback-only network namespace (``scripts/hermetic``, as ``make test`` runs the
suites), where it builds the NAT lab of ``tests/natlab.py``: the cloud, coturn (STUN and
TURN over UDP and TCP, the production configuration), redis-server, SecantusDB and a relay
node on a public segment, and one home per NAT type for cameras and another for viewers:
``none`` (on the public segment), ``eim`` (Linux ``masquerade``: endpoint-independent
mapping, address-and-port-dependent filtering), ``symmetric`` (``masquerade
fully-random``) and ``udp_blocked`` (the router drops UDP: TURN over TCP). A camera agent
(``python -m device_sim run``, 320x240 at 15 fps) runs in each camera home, a viewer agent
(``device_sim.viewer.Viewer`` in ``python -m tests.natlab viewer``) in each viewer home.

1. The matrix: for each of the 16 cells, ``--sessions`` sessions one after another, mode
   ``auto`` (peer to peer, then a relay node), each timed from ``session.request`` to the
   first decoded frame (TTFF). Per cell: the route, the selected pair's candidate types
   (the viewer's local -> remote, and the camera's local candidate), how each relay
   candidate reaches TURN, TTFF p50 and max, and the verdict: every session connects, by
   the expected path (peer to peer without TURN where one side has no NAT or both map
   endpoint-independently, through TURN elsewhere), with TTFF p50 <= 1 s.
2. Impairment (item 7): a viewer home behind an ``eim`` router that drops ``--loss`` % of
   the packets it forwards each way (nftables ``numgen random``) and a delay line adding
   ``--rtt-ms`` / 2 each way between it and the public segment; ``--impaired-sessions``
   sessions to the EIM camera (hole punching), to the symmetric one (TURN) and to the
   symmetric one through the relay node (mode ``relay``: the relay's sender answers the
   viewer's NACKs and PLIs), each watched for ``--hold-s``: frames decoded per second, the
   longest time without a new frame, how much further behind the camera the picture was at
   the end of the hold than at its start, and what the viewer's loss repair did (packets
   lost, asked for again after an unanswered NACK, and PLIs sent;
   ``peer.repair.ReceiverRepair``). Targets: TTFF <= 3 s, and the video keeps
   playing (>= 10 fps over the hold, no gap over 1 s).
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.natlab import Camera, Lab, Nat, ViewerAgent, natlab, unavailable  # noqa: E402
from tests.servers import secantus_server  # noqa: E402

TTFF_P50_TARGET_MS = 1000
IMPAIRED_TTFF_MS = 3000
IMPAIRED_MIN_FPS = 10.0
IMPAIRED_MAX_GAP_MS = 1000
FPS = 15


def expected_path(camera: Nat, viewer: Nat) -> str:
    """``direct`` where ICE needs no TURN, ``turn`` elsewhere."""
    if Nat.UDP_BLOCKED in (camera, viewer):
        return "turn"
    if Nat.NONE in (camera, viewer) or camera == viewer == Nat.EIM:
        return "direct"
    return "turn"


@dataclass
class Cell:
    camera: Nat
    viewer: str
    sessions: list[dict[str, Any]] = field(default_factory=list)
    camera_pairs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [s for s in self.sessions if s["ok"]]

    def ttffs(self) -> list[float]:
        return [float(s["ttff_ms"]) for s in self.ok]

    def most(self, describe: Any) -> str:
        seen = Counter(describe(s) for s in self.ok)
        return " / ".join(f"{k}" + (f" ({n})" if len(seen) > 1 else "") for k, n in seen.items())

    def path(self) -> str:
        """How the sessions went: ``direct``, ``turn`` or ``relay node`` (mixed: joined)."""

        def one(s: dict[str, Any]) -> str:
            if s["route"] == "relay":
                return "relay node"
            pair = s["pair"]
            relayed = "relay" in (pair["local"]["type"], pair["remote"]["type"])
            return "turn" if relayed else "direct"

        return self.most(one) or "-"


def pair_text(s: dict[str, Any]) -> str:
    return f"{s['pair']['local']['type']} -> {s['pair']['remote']['type']}"


def turn_text(cell: Cell) -> str:
    """Which side's relay candidate reaches TURN, and over what (``-``: none is relayed)."""
    parts = set()
    for s in cell.ok:
        if s["turn"]:
            parts.add(f"viewer {s['turn']['protocol']}")
    for pair in cell.camera_pairs:
        if pair["local"]["type"] == "relay":
            parts.add(f"camera {pair['local'].get('relay_protocol', '?')}")
    return ", ".join(sorted(parts)) or "-"


def watch(
    agent: ViewerAgent,
    camera: Camera,
    cell: Cell,
    sessions: int,
    hold_s: float = 0.0,
    mode: str = "auto",
) -> None:
    for _ in range(sessions):
        before = len(camera.connected_pairs())
        result = agent.watch(camera.device_id, mode=mode, hold_s=hold_s, timeout_s=30)
        cell.sessions.append(result)
        time.sleep(0.3)  # the camera logs its pair as it connects; let it flush
        cell.camera_pairs += camera.connected_pairs()[before:]
        if not result["ok"]:
            print(f"  {cell.camera} x {cell.viewer}: FAILED {result.get('error')}", flush=True)


def matrix(lab: Lab, cameras: dict[Nat, Camera], viewers: dict[Nat, ViewerAgent], n: int) -> None:
    print(f"\n1. The matrix: {n} sessions per cell, mode auto, zero-delay links (ms)\n")
    print(
        "| camera | viewer | expected | path | route | pair (viewer: local -> remote) "
        "| camera's local | TURN transport | TTFF p50 | max | connected | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---:|---:|---:|---|")
    misses = 0
    for camera_nat in Nat:
        for viewer_nat in Nat:
            cell = Cell(camera_nat, viewer_nat.value)
            watch(viewers[viewer_nat], cameras[camera_nat], cell, n)
            expected = expected_path(camera_nat, viewer_nat)
            ttffs = cell.ttffs()
            p50 = statistics.median(ttffs) if ttffs else float("nan")
            verdict = len(cell.ok) == n and cell.path() == expected and p50 <= TTFF_P50_TARGET_MS
            misses += not verdict
            camera_local = Counter(p["local"]["type"] for p in cell.camera_pairs)
            print(
                f"| {camera_nat} | {viewer_nat} | {expected} | {cell.path()} "
                f"| {cell.most(lambda s: s['route']) or '-'} | {cell.most(pair_text) or '-'} "
                f"| {' / '.join(camera_local) or '-'} | {turn_text(cell)} "
                f"| {p50:.0f} | {max(ttffs) if ttffs else float('nan'):.0f} "
                f"| {len(cell.ok)}/{n} | {'PASS' if verdict else 'MISS'} |",
                flush=True,
            )
    print(f"\n{16 - misses}/16 cells meet every target")


def impaired(
    lab: Lab, cameras: dict[Nat, Camera], agent: ViewerAgent, args: argparse.Namespace
) -> None:
    home = agent.home
    home.set_loss(args.loss)
    home.set_delay(args.rtt_ms / 2)
    print(
        f"\n2. Impaired viewer link: {args.loss} % loss each way on the viewer's EIM router, "
        f"+{args.rtt_ms / 2:g} ms each way (RTT ~{args.rtt_ms:g} ms); "
        f"{args.impaired_sessions} sessions per camera, each watched {args.hold_s:g} s\n"
    )
    print(
        "| camera | path | pair (viewer: local -> remote) | TTFF each session (of it: ICE+DTLS) "
        "| connected | fps over the hold (min) | longest gap | fell behind (max) "
        "| lost / asked again / PLIs | verdict |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---|---|")
    for camera_nat, mode in ((Nat.EIM, "auto"), (Nat.SYMMETRIC, "auto"), (Nat.SYMMETRIC, "relay")):
        cell = Cell(camera_nat, "eim (impaired)")
        watch(agent, cameras[camera_nat], cell, args.impaired_sessions, args.hold_s, mode)
        fps = [s["frames"] / args.hold_s for s in cell.ok]
        gaps = [int(s["max_gap_ms"]) for s in cell.ok]
        behind = [int(s["behind_ms"]) for s in cell.ok if s.get("behind_ms") is not None]
        repairs = [s["repair"] for s in cell.ok if s.get("repair")]
        ttffs = cell.ttffs()
        verdict = (
            len(cell.ok) == args.impaired_sessions
            and max(ttffs) <= IMPAIRED_TTFF_MS
            and min(fps) >= IMPAIRED_MIN_FPS
            and max(gaps) <= IMPAIRED_MAX_GAP_MS
        )
        sessions = ", ".join(f"{s['ttff_ms']:.0f} ({s.get('ice_ms') or '?'})" for s in cell.ok)
        repaired = " / ".join(
            str(sum(r[k] for r in repairs)) for k in ("lost", "renacked", "keyframe_requests")
        )
        print(
            f"| {camera_nat} | {cell.path()} | {cell.most(pair_text) or '-'} "
            f"| {sessions} | {len(cell.ok)}/{args.impaired_sessions} "
            f"| {statistics.mean(fps) if fps else 0:.1f} ({min(fps) if fps else 0:.1f}) "
            f"| {max(gaps) if gaps else 0} ms | {max(behind) if behind else '-'} ms "
            f"| {repaired if repairs else '-'} | {'PASS' if verdict else 'MISS'} |",
            flush=True,
        )
    home.set_loss(0)
    home.set_delay(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3, help="per cell of the matrix")
    parser.add_argument("--impaired-sessions", type=int, default=3, help="per impaired cell")
    parser.add_argument("--hold-s", type=float, default=10.0, help="impaired: watch this long")
    parser.add_argument("--loss", type=int, default=5, help="impaired: %% dropped each way")
    parser.add_argument("--rtt-ms", type=float, default=150.0, help="impaired: added RTT")
    parser.add_argument("--only", choices=["matrix", "impaired"], help="run one part only")
    parser.add_argument("--logs", type=Path, help="keep the lab's logs here (default: none)")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        sys.exit(f"{reason}\nrun: scripts/hermetic .venv/bin/python bench/connectivity.py")
    started = time.monotonic()
    print(
        f"bench/connectivity.py  {datetime.datetime.now():%Y-%m-%d %H:%M}  "
        f"{os.cpu_count()} x {cpu_model()}  Python {platform.python_version()}  "
        f"cameras 320x240@{FPS} (synthetic, the agent's encoder), Python viewers (decoding)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-connectivity-") as tmp:
        directory = Path(tmp)
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            directory = args.logs.resolve()
        with secantus_server(directory / "db") as mongodb_url, natlab(directory) as lab:
            for side in ("cam", "view"):
                for nat in Nat:
                    lab.add_home(f"{side}-{nat}", nat)
            impaired_home = lab.add_home("view-impaired", Nat.EIM, wire=True)
            lab.start_services(mongodb_url)
            email, headers = lab.account()
            cameras = {}
            for nat in Nat:
                home = lab.homes[f"cam-{nat}"]
                cameras[nat] = lab.start_camera(home, lab.onboard(home, headers, f"cam-{nat}"))
            viewers = {
                nat: lab.start_viewer(lab.homes[f"view-{nat}"], email, wait=False) for nat in Nat
            }
            impaired_viewer = lab.start_viewer(impaired_home, email, wait=False)
            lab.wait_online(headers, list(cameras.values()))
            for agent in [*viewers.values(), impaired_viewer]:
                agent.ready()
            print(f"lab up in {time.monotonic() - started:.1f} s", flush=True)
            if args.only != "impaired":
                matrix(lab, cameras, viewers, args.sessions)
            if args.only != "matrix":
                impaired(lab, cameras, impaired_viewer, args)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
