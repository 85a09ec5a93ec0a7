// Live view over WebRTC (docs/protocol.md, "WebSocket signaling"), receive-only.
//
// One attempt is one session: session.request -> session.created {route, ice_servers} ->
// RTCPeerConnection with a recvonly video transceiver -> session.offer -> session.answer,
// with session.ice both ways (null = end of candidates) -> ICE connected -> first frame.
//
// Mode "auto" makes a direct ("p2p") attempt first; when its ICE fails or has not connected
// within CONNECT_DIRECT_MS, that session is ended and a "relay" one is requested (the cloud
// leaves the choice to the viewer, who alone sees whether its network lets packets through).
// A refusal (a `status` error, or a `session.end` answering the request, e.g. an offline
// camera) is final: the relay would not help.
//
// Candidates: full trickle. The offer leaves as soon as setLocalDescription has resolved,
// before gathering (so without candidates), and every candidate follows in a session.ice as
// the browser finds it, then `null` at the end of gathering. The first frame does not wait
// for gathering (a silent STUN/TURN server would hold it for seconds): the camera's answer
// carries all its candidates and the browser, as the controlling ICE agent, checks them at
// once. Candidates may reach an aiortc peer (the camera, the relay node) before it has
// applied the offer, even before it has seen it: both hold them per session until the offer
// is applied (peer/ice.py, EarlyCandidates and RemoteCandidates), and stock browsers' mDNS
// host candidates are learnt from their checks as peer-reflexive ones.
//
// Codecs: the offer prefers H.264, then VP8 (codecs.js). The codec received is read from
// getStats (sessionstats.js).
//
// Once the first frame is on screen the page tells the cloud how the session connected
// (`session.stats`: the selected candidate pair's types and first-hop protocol from getStats,
// ICE duration from the offer to "connected", time to first frame; sessionstats.js), so that
// the camera's owner can see why a session was relayed (GET /devices/{id}/sessions).
//
// Every wait has a deadline and ends in a visible outcome (LiveError with a reason).

import { preferCodecs } from "./codecs.js";
import { firstHop, receivedCodec, selectedPair, statsMessage } from "./sessionstats.js";
import { newId } from "./signaling.js";
import { endReasonText } from "./words.js";

export const CONNECT_DIRECT_MS = 5000;
const CONNECT_RELAY_MS = 15000;
const REQUEST_TIMEOUT_MS = 10000;
const ANSWER_TIMEOUT_MS = 10000;
const FIRST_FRAME_MS = 10000;
// Direct-attempt failures that a relay can get around.
const FALLBACK_REASONS = new Set(["ice_failed", "timeout"]);

export class LiveError extends Error {
  constructor(reason, message = endReasonText(reason)) {
    super(message);
    this.reason = reason;
  }
}

function deadline(ms, reason, message) {
  let timer;
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new LiveError(reason, message)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

async function race(promise, ended, ms, reason, message) {
  const timer = deadline(ms, reason, message);
  try {
    return await Promise.race([promise, ended, timer.promise]);
  } finally {
    timer.cancel();
  }
}

/** One session with the camera (directly) or with a relay node. */
class Attempt {
  constructor(signaling, deviceId, mode, video) {
    this.signaling = signaling;
    this.deviceId = deviceId;
    this.mode = mode;
    this.video = video;
    this.sessionId = null;
    this.route = null; // "p2p" | "relay", as the cloud routed it
    this.codec = null; // "H264" | "VP8", as received
    this.pc = null;
    this.remoteSet = false;
    this.pendingRemote = [];
    this.offerSent = false;
    this.heldLocal = [];
    this.unsubscribe = [];
    this.closed = false;
    this.endedByCloud = false;
    this.outcome = null;
    let settle;
    this.ended = new Promise((resolve) => {
      settle = resolve;
    });
    this.settle = settle;
    // rejects as soon as the attempt ends: raced against every step of the setup
    this.failed = this.ended.then((end) => {
      throw new LiveError(end.reason, end.message);
    });
    this.failed.catch(() => {});
    let frame;
    this.firstFrame = new Promise((resolve) => {
      frame = resolve;
    });
    this.frameSeen = frame;
  }

  /** Ask for a session and play it; resolves once the first frame is on screen. */
  async open(connectMs) {
    this.requestedAt = performance.now();
    this.unsubscribe.push(this.signaling.on("disconnected", () => this.finish("connection_lost")));
    const reply = await Promise.race([
      this.signaling.request(
        { type: "session.request", device_id: this.deviceId, mode: this.mode },
        REQUEST_TIMEOUT_MS,
      ).catch((error) => {
        throw new LiveError(error.code === "timeout" ? "no_answer" : "connection_lost", error.message);
      }),
      this.failed,
    ]);
    if (reply.type === "status") {
      const error = reply.error ?? {};
      throw new LiveError(error.code ?? "refused", sentence(error.message ?? "The request was refused."));
    }
    if (reply.type === "session.end") throw new LiveError(reply.reason);
    this.sessionId = reply.session_id;
    this.route = reply.route;
    this.#listen();
    this.pc = new RTCPeerConnection({ iceServers: iceServers(reply.ice_servers) });
    preferCodecs(this.pc.addTransceiver("video", { direction: "recvonly" }));
    this.pc.ontrack = (event) => this.#show(event.track);
    this.pc.onicecandidate = (event) => this.#localCandidate(event.candidate);
    const connected = new Promise((resolve) => {
      this.pc.onconnectionstatechange = () => {
        const state = this.pc.connectionState;
        if (state === "connected") resolve();
        else if (state === "failed") {
          this.finish("ice_failed", this.connectedAt ? "The video connection was lost." : undefined);
        }
      };
    });
    connected.then(() => {
      this.connectedAt = performance.now();
    });
    await Promise.race([this.pc.setLocalDescription(await this.pc.createOffer()), this.failed]);
    this.offerSentAt = performance.now();
    this.signaling.send({
      type: "session.offer", session_id: this.sessionId, sdp: this.pc.localDescription.sdp,
    });
    this.offerSent = true;
    // candidates found before setLocalDescription resolved (none, usually), in their order
    for (const candidate of this.heldLocal.splice(0)) this.#sendCandidate(candidate);
    await race(this.answered(), this.failed, ANSWER_TIMEOUT_MS, "timeout",
      "The camera did not answer in time.");
    await race(connected, this.failed, connectMs, "timeout",
      `No video connection within ${Math.round(connectMs / 1000)} s.`);
    await race(this.firstFrame, this.failed, FIRST_FRAME_MS, "no_picture");
    this.firstFrameAt = performance.now();
    this.pair = await selectedPair(this.pc).catch(() => null);
    this.codec = await receivedCodec(this.pc).catch(() => null);
    this.#report();
  }

  /** session.stats: how this session connected, for the owner's list of sessions. */
  #report() {
    if (this.closed || this.connectedAt === undefined) return;
    const message = statsMessage(
      this.sessionId,
      this.routeKind,
      this.pair,
      this.connectedAt - this.offerSentAt,
      this.firstFrameAt - this.requestedAt,
    );
    if (message) this.signaling.send(message);
  }

  /** "direct", "turn" (a TURN server relays the packets) or "relay" (a relay node). */
  get routeKind() {
    if (this.route === "relay") return "relay";
    const types = [this.pair?.local?.type, this.pair?.remote?.type];
    return types.includes("relay") ? "turn" : "direct";
  }

  answered() {
    if (!this.answerPromise) {
      this.answerPromise = new Promise((resolve) => {
        this.answerResolve = resolve;
      });
    }
    return this.answerPromise;
  }

  /** The attempt is over (idempotent): tell the cloud unless it told us, free everything. */
  finish(reason, message = endReasonText(reason)) {
    if (this.closed) return;
    this.closed = true;
    this.outcome = { reason, message };
    if (this.sessionId && !this.endedByCloud) {
      this.signaling.send({ type: "session.end", session_id: this.sessionId, reason: wireReason(reason) });
    }
    for (const off of this.unsubscribe) off();
    if (this.pc) {
      this.pc.onconnectionstatechange = null;
      this.pc.close();
    }
    this.settle(this.outcome);
  }

  #listen() {
    const mine = (message) => message.session_id === this.sessionId;
    this.unsubscribe.push(
      this.signaling.on("session.answer", (message) => {
        if (mine(message)) this.#answer(message.sdp);
      }),
      this.signaling.on("session.ice", (message) => {
        if (mine(message)) this.#remoteCandidate(message.candidate ?? null);
      }),
      this.signaling.on("session.end", (message) => {
        if (!mine(message)) return;
        this.endedByCloud = true;
        this.finish(message.reason ?? "peer_hangup");
      }),
    );
  }

  async #answer(sdp) {
    if (this.closed || this.remoteSet) return;
    try {
      await this.pc.setRemoteDescription({ type: "answer", sdp });
    } catch {
      this.finish("invalid_offer", "The camera's answer could not be used by this browser.");
      return;
    }
    this.remoteSet = true;
    for (const candidate of this.pendingRemote.splice(0)) await this.#addRemote(candidate);
    this.answered();
    this.answerResolve();
  }

  async #remoteCandidate(candidate) {
    if (this.closed) return;
    if (!this.remoteSet) {
      this.pendingRemote.push(candidate);
      return;
    }
    await this.#addRemote(candidate);
  }

  async #addRemote(candidate) {
    try {
      // no argument: end of candidates
      await (candidate ? this.pc.addIceCandidate(candidate) : this.pc.addIceCandidate());
    } catch (error) {
      console.warn("ignored a remote candidate", error);
    }
  }

  #localCandidate(candidate) {
    if (this.closed) return;
    if (candidate && !candidate.candidate) return; // end of one generation; null follows
    // every candidate goes behind the offer, never before it (see the header)
    if (this.offerSent) this.#sendCandidate(candidate);
    else this.heldLocal.push(candidate);
  }

  #sendCandidate(candidate) {
    this.signaling.send({
      type: "session.ice",
      session_id: this.sessionId,
      // only the contract's fields (the browser's toJSON adds usernameFragment)
      candidate: candidate && {
        candidate: candidate.candidate,
        sdpMid: candidate.sdpMid,
        sdpMLineIndex: candidate.sdpMLineIndex,
      },
    });
  }

  #show(track) {
    if (this.closed) return;
    const video = this.video;
    video.srcObject = new MediaStream([track]);
    const seen = () => this.frameSeen();
    if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(seen);
    video.addEventListener("playing", seen, { once: true });
    video.play().catch(() => {}); // muted + playsinline: autoplay is allowed
  }
}

/** The contract's end reason for why this side ended a session (docs/protocol.md list). */
function wireReason(reason) {
  if (["user_hangup", "ice_failed", "timeout", "invalid_offer"].includes(reason)) return reason;
  return reason === "no_picture" ? "timeout" : "ice_failed";
}

function sentence(text) {
  const trimmed = String(text).trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

function iceServers(list) {
  return (list ?? []).map(({ urls, username, credential }) => {
    const server = { urls };
    if (username !== undefined) server.username = username;
    if (credential !== undefined) server.credential = credential;
    return server;
  });
}

/**
 * A live view of one camera in `video`. `mode`: "auto" (direct, then the relay), "p2p" or
 * "relay". Callbacks: onStatus(text), onPlaying({route, pair, protocol, codec, ttffMs,
 * totalMs, fellBack}) (`protocol`: firstHop(pair); `codec`: the received video's MIME
 * subtype, "H264" or "VP8", null if unknown),
 * onEnded({reason, message}) — called once, whatever ends it (not after end()).
 */
export class LiveSession {
  constructor(signaling, deviceId, video, { mode = "auto", onStatus, onPlaying, onEnded } = {}) {
    this.signaling = signaling;
    this.deviceId = deviceId;
    this.video = video;
    this.mode = mode;
    this.onStatus = onStatus ?? (() => {});
    this.onPlaying = onPlaying ?? (() => {});
    this.onEnded = onEnded ?? (() => {});
    this.attempt = null;
    this.stopped = false;
  }

  async start() {
    const startedAt = performance.now();
    const modes = this.mode === "auto" ? ["p2p", "relay"] : [this.mode];
    let directFailure = null;
    for (const mode of modes) {
      if (this.stopped) return;
      const attempt = new Attempt(this.signaling, this.deviceId, mode, this.video);
      this.attempt = attempt;
      this.onStatus(statusText(mode, directFailure));
      const connectMs = mode === "p2p" && this.mode === "auto" ? CONNECT_DIRECT_MS : CONNECT_RELAY_MS;
      try {
        await attempt.open(connectMs);
      } catch (error) {
        const failure = error instanceof LiveError ? error : new LiveError("ice_failed", String(error));
        attempt.finish(failure.reason, failure.message);
        if (this.stopped) return;
        const fallBack = this.mode === "auto" && mode === "p2p" && FALLBACK_REASONS.has(failure.reason);
        if (fallBack) {
          directFailure = failure;
          continue;
        }
        this.#end(directFailure ? relayFailure(failure) : explain(failure, this.mode));
        return;
      }
      attempt.ended.then((end) => this.#end(end));
      this.onPlaying({
        route: attempt.routeKind,
        pair: attempt.pair,
        protocol: firstHop(attempt.pair),
        codec: attempt.codec,
        ttffMs: attempt.firstFrameAt - attempt.requestedAt,
        totalMs: attempt.firstFrameAt - startedAt,
        fellBack: directFailure !== null,
      });
      return;
    }
  }

  /** The user ends the view: session.end (user_hangup); no onEnded call. */
  end() {
    this.stopped = true;
    this.attempt?.finish("user_hangup");
    this.video.srcObject = null;
  }

  /** Video statistics for the status line: {width, height, fps, framesDecoded}. */
  async stats() {
    const pc = this.attempt?.pc;
    if (!pc || this.attempt.closed) return null;
    const stats = await pc.getStats();
    let inbound = null;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") inbound = report;
    });
    return inbound && {
      width: inbound.frameWidth ?? this.video.videoWidth,
      height: inbound.frameHeight ?? this.video.videoHeight,
      fps: inbound.framesPerSecond ?? 0,
      framesDecoded: inbound.framesDecoded ?? 0,
    };
  }

  #end(end) {
    if (this.stopped) return;
    this.stopped = true;
    this.video.srcObject = null;
    this.onEnded({ reason: end.reason, message: end.message });
  }
}

function statusText(mode, directFailure) {
  if (mode === "p2p") return "Connecting directly to the camera…";
  return directFailure
    ? "No direct connection; going through a relay node…"
    : "Connecting through a relay node…";
}

function explain(failure, mode) {
  if (mode !== "p2p" || !FALLBACK_REASONS.has(failure.reason)) return failure;
  return new LiveError(
    failure.reason,
    `${failure.message} A direct connection may be blocked by the networks in between: try Auto or Relay.`,
  );
}

function relayFailure(failure) {
  return new LiveError(
    failure.reason,
    `No direct connection, and the relay could not help either: ${failure.message}`,
  );
}
