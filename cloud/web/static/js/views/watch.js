// The live view of one camera, with the route it took (and why, in plain words) and the codec
// received, the time to the first frame, and this camera's latest events underneath.

import { fill, h } from "../dom.js";
import { EventFeed } from "../feed.js";
import { LiveSession } from "../live.js";
import { ROUTE_TEXT, codecText, routeReasonText, seconds } from "../words.js";
import { dot, presenceText } from "./cameras.js";

export const NAME = "live";

const MODES = [["auto", "Auto"], ["p2p", "Direct"], ["relay", "Relay"]];
const ONLINE_WAIT_MS = 10000;

export function mount(app, { id }, query) {
  let mode = MODES.some(([m]) => m === query.get("mode")) ? query.get("mode") : "auto";
  const video = h("video", { autoplay: true, playsinline: true, "aria-label": "Live video" });
  video.muted = true; // autoplay needs it; cameras here have no audio anyway
  const overlay = h("div", { class: "overlay", role: "status" }, "Connecting…");
  const routeBadge = h("span", { class: "route", dataset: { route: "" } }, "—");
  const codecBadge = h("span", { class: "codec", dataset: { codec: "" }, hidden: true });
  const routeReason = h("span", { class: "route-reason", hidden: true });
  const ttff = h("span", { class: "ttff" }, "");
  const stats = h("span", { class: "muted small stats" }, "");
  const ended = h("p", { class: "live-ended", role: "alert", hidden: true });
  const endButton = h("button", { type: "button", class: "danger" }, "End");
  const againButton = h("button", { type: "button", class: "primary", hidden: true }, "Watch again");
  const head = h("div", { class: "camera-head" });
  const modeButtons = MODES.map(([value, label]) => h("button", {
    type: "button", role: "radio", dataset: { mode: value }, "aria-checked": String(value === mode),
  }, label));
  const feed = new EventFeed(app, { deviceId: id, limit: 5, compact: true });
  const box = h("div", { class: "video-box", dataset: { phase: "connecting" } }, video, overlay);

  app.main.append(h("section", { class: "live" },
    h("a", { class: "back", href: "#/cameras" }, "‹ Cameras"),
    head,
    box,
    h("div", { class: "live-info" },
      h("span", {}, "Route ", routeBadge, codecBadge), routeReason, ttff, stats),
    ended,
    h("div", { class: "row" },
      h("div", { class: "segmented", role: "radiogroup", "aria-label": "Route" }, modeButtons),
      h("span", { class: "spacer" }),
      endButton, againButton),
    h("h2", {}, "Latest events"),
    feed.element,
  ));

  const paintHead = () => {
    const device = app.devices.get(id);
    if (!device) return;
    fill(head, dot(device), h("div", {},
      h("h1", { class: "camera-title" }, device.name),
      h("span", { class: "muted presence" }, presenceText(device, app.api.serverNow()))));
  };
  const onDevices = () => paintHead();
  app.devices.addEventListener("change", onDevices);
  paintHead();
  if (!app.devices.get(id)) app.devices.load().catch(() => {});
  feed.load();

  let session = null;
  let statsTimer = null;
  let gone = false;

  const phase = (name, text) => {
    box.dataset.phase = name;
    overlay.hidden = name === "playing";
    if (text !== undefined) overlay.textContent = text;
  };

  const stop = (message) => {
    clearInterval(statsTimer);
    stats.textContent = "";
    session = null;
    endButton.hidden = true;
    againButton.hidden = false;
    phase("ended", "Not playing");
    if (message) {
      ended.textContent = message;
      ended.hidden = false;
    }
  };

  let starts = 0;
  const start = async () => {
    const run = ++starts;
    session?.end();
    session = null;
    clearInterval(statsTimer);
    ended.hidden = true;
    endButton.hidden = false;
    againButton.hidden = true;
    routeBadge.textContent = "—";
    routeBadge.dataset.route = "";
    codecBadge.textContent = "";
    codecBadge.dataset.codec = "";
    codecBadge.hidden = true;
    routeReason.textContent = "";
    routeReason.hidden = true;
    ttff.textContent = "";
    stats.textContent = "";
    phase("connecting", "Connecting to the service…");
    const connected = await online(app.signaling);
    if (gone || run !== starts) return; // left, or started again meanwhile
    if (!connected) {
      stop("Not connected to the service. Check your connection and try again.");
      return;
    }
    const current = new LiveSession(app.signaling, id, video, {
      mode,
      onStatus: (text) => phase("connecting", text),
      onPlaying: (info) => {
        if (session !== current) return;
        phase("playing");
        routeBadge.textContent = ROUTE_TEXT[info.route];
        routeBadge.dataset.route = info.route;
        routeBadge.title = info.pair
          ? `${info.pair.local?.type} ${info.pair.local?.address} ⇄ ${info.pair.remote?.type} ${info.pair.remote?.address}`
          : "";
        codecBadge.textContent = info.codec ? codecText(info.codec) : "";
        codecBadge.dataset.codec = info.codec ?? "";
        codecBadge.hidden = !info.codec;
        routeReason.textContent = routeReasonText(info.route, info.pair, info.protocol);
        routeReason.hidden = !routeReason.textContent;
        ttff.dataset.ms = String(Math.round(info.ttffMs));
        ttff.textContent = info.fellBack
          ? `First frame ${seconds(info.ttffMs)} (${seconds(info.totalMs)} with the direct attempt)`
          : `First frame ${seconds(info.ttffMs)}`;
        statsTimer = setInterval(async () => {
          const s = await current.stats().catch(() => null);
          if (s && session === current) {
            stats.textContent = `${s.width}×${s.height} · ${Math.round(s.fps)} fps`;
          }
        }, 1000);
      },
      onEnded: ({ message }) => {
        if (session === current) stop(message);
      },
    });
    session = current;
    current.start();
  };

  endButton.addEventListener("click", () => {
    session?.end();
    stop("You ended the live view.");
  });
  againButton.addEventListener("click", () => start());
  for (const button of modeButtons) {
    button.addEventListener("click", () => {
      mode = button.dataset.mode;
      for (const other of modeButtons) other.setAttribute("aria-checked", String(other === button));
      start();
    });
  }
  start();

  return () => {
    gone = true;
    session?.end();
    clearInterval(statsTimer);
    feed.destroy();
    app.devices.removeEventListener("change", onDevices);
  };
}

/** Resolve true once signaling is online (at once if it is), false after ONLINE_WAIT_MS. */
function online(signaling) {
  if (signaling.state === "online") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      off();
      resolve(false);
    }, ONLINE_WAIT_MS);
    const listener = (event) => {
      if (event.detail.state !== "online") return;
      clearTimeout(timer);
      off();
      resolve(true);
    };
    const off = () => signaling.removeEventListener("state", listener);
    signaling.addEventListener("state", listener);
  });
}
