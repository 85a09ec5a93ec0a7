// A live session's statistics, read from the browser's getStats (docs/protocol.md,
// "Session statistics"): the codec received, the selected candidate pair and this side's
// first hop, and the `session.stats` message built from them once the first frame is on
// screen, so that the camera's owner can see why a session was relayed
// (GET /devices/{id}/sessions).

// session.stats bounds (docs/protocol.md, "Session statistics")
const CANDIDATE_TYPES = new Set(["host", "srflx", "prflx", "relay"]);
const MAX_ICE_MS = 120000;
const MAX_TTFF_MS = 300000;

/** The received video's codec as its MIME subtype ("H264", "VP8"), or null if not known yet. */
export async function receivedCodec(pc) {
  const stats = await pc.getStats();
  let codec = null;
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video" && report.codecId) {
      const mimeType = stats.get(report.codecId)?.mimeType;
      if (mimeType) codec = mimeType.split("/").pop();
    }
  });
  return codec;
}

/**
 * The candidate pair carrying media: {local: {type, address, port, protocol, relayProtocol},
 * remote}; `relayProtocol` ("udp", "tcp" or "tls") only for a local relay candidate: how the
 * browser reaches its TURN server.
 */
export async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((report) => {
    if (report.type === "transport" && report.selectedCandidatePairId) {
      pair = stats.get(report.selectedCandidatePairId) ?? pair;
    }
  });
  if (!pair) {
    stats.forEach((report) => {
      if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") {
        pair ??= report;
      }
    });
  }
  if (!pair) return null;
  const describe = (candidate) => candidate && {
    type: candidate.candidateType,
    address: candidate.address ?? candidate.ip ?? "",
    port: candidate.port,
    protocol: candidate.protocol,
    relayProtocol: candidate.relayProtocol,
  };
  return {
    local: describe(stats.get(pair.localCandidateId)),
    remote: describe(stats.get(pair.remoteCandidateId)),
  };
}

/**
 * The transport of this side's first hop, "udp" or "tcp" (null if unknown): to the TURN
 * server for a local relay candidate (TLS counts as TCP), else the local candidate's.
 */
export function firstHop(pair) {
  const local = pair?.local;
  const protocol = local?.type === "relay" ? local.relayProtocol : local?.protocol;
  if (protocol === "tls") return "tcp";
  return protocol === "udp" || protocol === "tcp" ? protocol : null;
}

/**
 * The session.stats message for a session playing on `pair` (null when the pair's types are
 * unknown). `route`: "direct", "turn" or "relay" as Attempt.routeKind.
 */
export function statsMessage(sessionId, route, pair, iceMs, ttffMs) {
  const local = pair?.local?.type;
  const remote = pair?.remote?.type;
  const protocol = firstHop(pair);
  if (!CANDIDATE_TYPES.has(local) || !CANDIDATE_TYPES.has(remote) || !protocol) return null;
  const ms = (value, max) => Math.min(max, Math.max(0, Math.round(value)));
  return {
    type: "session.stats",
    session_id: sessionId,
    route: route === "direct" ? "p2p" : route,
    local_candidate_type: local,
    remote_candidate_type: remote,
    protocol,
    ice_ms: ms(iceMs, MAX_ICE_MS),
    ttff_ms: ms(ttffMs, MAX_TTFF_MS),
  };
}
