// Plain words for the protocol's codes, and the app's small formatting rules.

const END_REASONS = {
  user_hangup: "You ended the live view.",
  peer_hangup: "The camera ended the live view.",
  ice_failed: "Could not open a video connection with the camera.",
  timeout: "The camera did not answer in time.",
  device_offline: "The camera went offline.",
  access_revoked: "Your access to this camera was removed.",
  device_removed: "The camera was removed from its account.",
  resource_exhausted: "Too many people are watching this camera right now. Try again later.",
  invalid_offer: "The camera could not accept this browser's video settings.",
  relay_failed: "The relay carrying the video stopped working.",
  server_shutdown: "The service is restarting. Try again in a moment.",
  codec_mismatch: "This browser cannot play the video format this camera sends.",
  video_unavailable: "The camera's video is not available right now. Try again in a moment.",
  resync: "The service lost track of this live view for a moment. Try again.",
  connection_lost: "Lost the connection to the service.",
  no_answer: "The service did not answer in time.",
  no_picture: "The connection opened but no picture arrived.",
};

export function endReasonText(reason) {
  return END_REASONS[reason] ?? `The live view ended (${reason}).`;
}

export const ROUTE_TEXT = {
  direct: "Direct",
  turn: "TURN",
  relay: "Relay node",
};

// Why a session took its route: the cloud's words too (GET /devices/{id}/sessions `reason`).
const ROUTE_REASONS = {
  sameNetwork: "Direct, same network",
  holePunching: "Direct, through the routers (hole punching)",
  turn: "Relayed by TURN: this network blocks direct connections",
  turnTcp: "Relayed by TURN over TCP: this network blocks UDP",
  relay: "Through a relay node",
};

/**
 * Why this view took `route` ("direct", "turn", "relay"), from the selected `pair` as this
 * browser sees it and `protocol` (its first hop, "udp" or "tcp"); "" when not known.
 */
export function routeReasonText(route, pair, protocol) {
  if (route === "relay") return ROUTE_REASONS.relay;
  const local = pair?.local?.type;
  const remote = pair?.remote?.type;
  if (route === "turn") {
    return local === "relay" && protocol === "tcp" ? ROUTE_REASONS.turnTcp : ROUTE_REASONS.turn;
  }
  if (!local || !remote) return "";
  if (local === "host" && remote === "host") return ROUTE_REASONS.sameNetwork;
  return ROUTE_REASONS.holePunching;
}

// The received video's codec, by its MIME subtype (live.js reports "H264", "VP8").
const CODECS = { H264: "H.264", VP8: "VP8" };

export function codecText(codec) {
  return CODECS[String(codec).toUpperCase()] ?? codec;
}

const KINDS = { motion: "Motion", person: "Person", vehicle: "Vehicle" };

export function kindText(kind) {
  return KINDS[kind] ?? kind.charAt(0).toUpperCase() + kind.slice(1).replaceAll("_", " ");
}

/** Motion scores are the moving share of the picture; detections' a confidence. */
export function scoreText(kind, score) {
  const percent = `${Math.max(1, Math.round(score * 100))} %`;
  return kind === "motion" ? `Moving area ${percent}` : `Confidence ${percent}`;
}

export function seconds(ms) {
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

/** "just now", "5 min ago", "3 h ago", or a date, relative to `now` (ms since the epoch). */
export function ago(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const s = Math.max(0, Math.round((now - then) / 1000));
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(then).toLocaleDateString(undefined, { day: "numeric", month: "short" });
}

export function clockTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function countdown(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
