// The video codecs a viewer offers (docs/protocol.md, "WebSocket signaling").
//
// The offer prefers H.264 (packetization mode 1, the cameras' codec), then VP8 (synthetic
// sources), with the browser's resiliency codecs (rtx, red, FEC) kept after them; a relay
// node forwards the camera's stream as it is, so a viewer must be able to take it (otherwise
// `session.end` with `codec_mismatch`).

// Chromium's setCodecPreferences takes only codecs from getCapabilities, and drops rtx, red
// and FEC from the offer unless they are listed too.
const RESILIENCE = new Set(["video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"]);

/**
 * The video codecs to offer, from the browser's capabilities, in order: every H.264 profile
 * in packetization mode 1 (in the browser's order), VP8, then the resiliency codecs; null
 * when the browser has neither H.264 nor VP8 (its own order is kept then).
 */
export function preferredCodecs(capabilities) {
  const codecs = capabilities?.codecs ?? [];
  const mime = (codec) => codec.mimeType.toLowerCase();
  const fmtp = (codec) => (codec.sdpFmtpLine ?? "").split(";").map((p) => p.trim());
  const h264 = codecs.filter(
    (c) => mime(c) === "video/h264" && fmtp(c).includes("packetization-mode=1"),
  );
  const vp8 = codecs.filter((c) => mime(c) === "video/vp8");
  if (h264.length + vp8.length === 0) return null;
  return [...h264, ...vp8, ...codecs.filter((c) => RESILIENCE.has(mime(c)))];
}

/** Ask `transceiver` for preferredCodecs(), where the browser lets a page choose. */
export function preferCodecs(transceiver) {
  if (typeof transceiver.setCodecPreferences !== "function") return;
  if (typeof RTCRtpReceiver.getCapabilities !== "function") return;
  const codecs = preferredCodecs(RTCRtpReceiver.getCapabilities("video"));
  if (!codecs) return;
  try {
    transceiver.setCodecPreferences(codecs);
  } catch (error) {
    console.warn("kept the browser's codec order", error);
  }
}
