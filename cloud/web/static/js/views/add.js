// Add a camera: name, model and Wi-Fi -> a QR code for the camera to scan, a countdown to
// its expiry, and "Camera connected" as soon as the camera activates.
//
// The `device.activated` message on the signaling socket is the primary signal; a cheap
// GET /api/v1/onboarding/{ticket_id} every POLL_MS covers a socket that is down.

import { busy, errorBox, fields, fill, h } from "../dom.js";
import { countdown } from "../words.js";

export const NAME = "add";

const POLL_MS = 4000;
const MODEL = /^[A-Za-z0-9][A-Za-z0-9 ._-]{0,47}$/;

function check({ device_name: name, camera_model: model, wifi_ssid: ssid, wifi_password: pass }) {
  if (!name) return "Please give the camera a name.";
  if (name.length > 64) return "The name can be at most 64 characters.";
  if (!MODEL.test(model)) {
    return "The model is 1 to 48 letters, digits, spaces, dots, dashes or underscores, starting with a letter or digit.";
  }
  if (!ssid) return "Please enter the Wi-Fi network name.";
  if (new TextEncoder().encode(ssid).length > 32) return "The Wi-Fi name can be at most 32 bytes.";
  const printable = /^[\x20-\x7e]{8,63}$/.test(pass) || /^[0-9A-Fa-f]{64}$/.test(pass);
  if (pass && !printable) {
    return "The Wi-Fi password must be 8 to 63 characters (or empty for an open network).";
  }
  return null;
}

export function mount(app) {
  const section = h("section", { class: "add" });
  app.main.append(section);
  let stop = () => {};
  const showForm = (values = {}) => {
    stop();
    stop = form(app, section, values, (ticket, deviceName, entered) => {
      stop = qr(app, section, ticket, deviceName, () => showForm(entered));
    });
  };
  showForm();
  return () => stop();
}

function form(app, section, values, done) {
  const error = errorBox();
  const submit = h("button", { type: "submit", class: "primary wide" }, "Show QR code");
  const input = (name, label, props = {}) => h("label", {}, label,
    h("input", { name, value: values[name] ?? "", ...props }));
  const password = h("input", {
    name: "wifi_password", type: "password", autocomplete: "off", value: values.wifi_password ?? "",
  });
  const reveal = h("button", {
    type: "button", class: "ghost small", "aria-pressed": "false",
    onclick: () => {
      const shown = password.type === "text";
      password.type = shown ? "password" : "text";
      reveal.setAttribute("aria-pressed", String(!shown));
      reveal.textContent = shown ? "Show" : "Hide";
    },
  }, "Show");
  const element = h("form", { class: "card stack", novalidate: true, "aria-label": "Add a camera" },
    input("device_name", "Camera name", { placeholder: "Front door", maxlength: 64, autocomplete: "off" }),
    input("camera_model", "Model", { placeholder: "EZ-C31", maxlength: 48, autocomplete: "off" }),
    input("wifi_ssid", "Wi-Fi name", { placeholder: "Home", autocomplete: "off" }),
    h("label", {}, "Wi-Fi password", h("span", { class: "with-button" }, password, reveal)),
    h("p", { class: "hint" },
      "The camera joins this Wi-Fi network. The password goes only into the QR code: it is never stored."),
    error,
    submit,
  );
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    const entered = fields(element);
    busy(submit, "Making the code…", error, async () => {
      const problem = check(entered);
      if (problem) throw new Error(problem);
      const ticket = await app.api.post("/api/v1/onboarding", entered);
      done(ticket, entered.device_name, { ...entered, wifi_password: "" });
    });
  });
  fill(section,
    h("h1", {}, "Add a camera"),
    h("p", { class: "muted" }, "Power the camera on, then fill in its details."),
    element);
  return () => {};
}

function qr(app, section, ticket, deviceName, again) {
  const expiresAt = Date.parse(ticket.expires_at);
  const clock = h("strong", { class: "countdown" }, "");
  const state = h("p", { class: "onboarding-state", role: "status", dataset: { state: "pending" } },
    h("span", { class: "spinner", "aria-hidden": "true" }),
    h("span", {}, "Waiting for the camera to scan the code…"));
  const image = h("img", {
    class: "qr",
    src: ticket.qr_png,
    alt: "QR code for the camera to scan",
    dataset: { ticketId: ticket.ticket_id },
  });
  const card = h("div", { class: "card qr-card" },
    image,
    h("p", { class: "countdown-line" }, "Code expires in ", clock),
  );
  fill(section,
    h("h1", {}, `Show this to “${deviceName}”`),
    h("ol", { class: "steps" },
      h("li", {}, "Hold the phone 15–30 cm in front of the camera lens."),
      h("li", {}, "Wait for the camera's chime; it then joins the Wi-Fi network."),
    ),
    card,
    state,
  );

  let finished = false;
  const timers = [];
  const unsubscribe = [];
  const stop = () => {
    finished = true;
    timers.forEach(clearInterval);
    unsubscribe.forEach((off) => off());
  };
  const connected = (deviceId) => {
    if (finished) return;
    stop();
    app.devices.load().catch(() => {});
    card.classList.add("done");
    image.hidden = true;
    clock.parentElement.hidden = true;
    state.dataset.state = "activated";
    state.dataset.deviceId = deviceId;
    fill(state,
      h("span", { class: "big-check", "aria-hidden": "true" }, "✓"),
      h("strong", {}, "Camera connected"),
      h("span", { class: "muted" }, `“${deviceName}” is now in your cameras.`),
      h("span", { class: "row" },
        h("a", { class: "button primary", href: `#/live/${deviceId}` }, "▶ Watch now"),
        h("a", { class: "button", href: "#/cameras" }, "My cameras")));
  };
  const expired = () => {
    if (finished) return;
    stop();
    image.classList.add("expired");
    clock.textContent = "0:00";
    state.dataset.state = "expired";
    fill(state,
      h("strong", {}, "This code has expired."),
      h("span", { class: "muted" }, "Codes last 10 minutes, so that an old picture of one is useless."),
      h("button", { type: "button", class: "primary", onclick: again }, "Make a new code"));
  };
  const tick = () => {
    const left = expiresAt - app.api.serverNow();
    clock.textContent = countdown(left);
    if (left <= 0) expired();
  };
  tick();
  timers.push(setInterval(tick, 1000));
  unsubscribe.push(app.signaling.on("device.activated", (message) => {
    if (message.ticket_id === ticket.ticket_id) connected(message.device_id);
  }));
  timers.push(setInterval(async () => {
    try {
      const status = await app.api.get(`/api/v1/onboarding/${ticket.ticket_id}`);
      if (status.status === "activated") connected(status.device_id);
      else if (status.status === "expired") expired();
    } catch {
      // the socket may still deliver; the countdown ends the wait in any case
    }
  }, POLL_MS));
  return stop;
}
