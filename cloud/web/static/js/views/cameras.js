// The camera list: an online dot and last-seen time per camera, updated live.

import { fill, h } from "../dom.js";
import { ago } from "../words.js";

export const NAME = "cameras";

export function presenceText(device, now) {
  if (device.online) return "Online";
  return device.last_seen ? `Offline · last seen ${ago(device.last_seen, now)}` : "Offline · not seen yet";
}

// What unattended analysis does for this camera now (docs/protocol.md, "Arming and analysis").
export function analysisText(device) {
  switch (device.analysis?.state) {
    case "active": return device.analysis_mode === "on_motion"
      ? "Armed · analysed when it detects motion" : "Armed · analysed";
    case "waiting_for_relay": return "Armed · waiting for an analysis node";
    case "disarmed": return device.armed ? "Disarmed by its schedule" : "Disarmed";
    default: return device.armed ? "Armed · analysed once online" : "Disarmed";
  }
}

export function dot(device) {
  return h("span", {
    class: `dot ${device.online ? "online" : "offline"}`,
    role: "img",
    "aria-label": device.online ? "Online" : "Offline",
  });
}

export function mount(app) {
  const list = h("ul", { class: "cards", "aria-label": "Cameras" });
  const status = h("p", { class: "muted", role: "status" }, "Loading your cameras…");
  app.main.append(
    h("section", {},
      h("div", { class: "section-head" },
        h("h1", {}, "Cameras"),
        h("a", { class: "button small", href: "#/add" }, "+ Add")),
      status,
      list,
    ),
  );

  const render = () => {
    const now = app.api.serverNow();
    const devices = [...app.devices.list].sort((a, b) => a.name.localeCompare(b.name));
    status.hidden = devices.length > 0;
    if (!devices.length) {
      fill(status, "No cameras yet. ", h("a", { href: "#/add" }, "Add your first camera"),
        ": the app shows a QR code that the camera scans.");
    }
    fill(list, devices.map((device) => h("li", {
      class: "card camera",
      dataset: { deviceId: device.id, online: String(device.online), role: device.role },
    },
      h("div", { class: "camera-main" },
        dot(device),
        h("div", { class: "camera-text" },
          h("span", {},
            h("strong", { class: "camera-name" }, device.name),
            device.role === "viewer" && h("span", { class: "badge" }, "Shared with you")),
          h("span", { class: "muted presence" }, presenceText(device, now)),
          h("span", { class: "muted small analysis", dataset: { state: device.analysis?.state } },
            analysisText(device)),
          h("span", { class: "muted small" }, device.camera_model)),
      ),
      h("div", { class: "row" },
        h("a", { class: "button primary", href: `#/live/${device.id}` }, "▶ Watch"),
        h("a", { class: "button", href: `#/camera/${device.id}` },
          device.role === "owner" ? "Manage" : "Details")),
    )));
  };

  const onChange = () => render();
  app.devices.addEventListener("change", onChange);
  const tick = setInterval(render, 30000); // "last seen 5 min ago" moves on
  if (app.devices.loaded) render();
  app.devices.load().catch((error) => {
    status.hidden = false;
    fill(status, error.message, " ",
      h("button", { type: "button", class: "small", onclick: () => app.route() }, "Try again"));
  });
  return () => {
    app.devices.removeEventListener("change", onChange);
    clearInterval(tick);
  };
}
