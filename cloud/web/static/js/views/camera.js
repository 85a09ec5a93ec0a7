// One camera's page: details for everyone who may see it; for its owner also rename,
// sharing (list, add, remove) and removing the camera from the account.

import { busy, confirmAction, errorBox, fields, fill, h } from "../dom.js";
import { analysisText, dot, presenceText } from "./cameras.js";

export const NAME = "camera";

export function mount(app, { id }) {
  const section = h("section", { class: "camera-page" },
    h("a", { class: "back", href: "#/cameras" }, "‹ Cameras"),
    h("p", { class: "muted", role: "status" }, "Loading…"));
  app.main.append(section);
  let alive = true;
  const offs = [];
  app.api.get(`/api/v1/devices/${id}`).then((device) => {
    if (!alive) return;
    app.devices.put(device);
    render(app, section, device, offs);
  }, (error) => {
    if (!alive) return;
    fill(section, h("a", { class: "back", href: "#/cameras" }, "‹ Cameras"),
      h("p", { class: "error", role: "alert" }, error.message));
  });
  return () => {
    alive = false;
    offs.forEach((off) => off());
  };
}

function render(app, section, device, offs) {
  const owner = device.role === "owner";
  const head = h("div", { class: "camera-head" });
  const paintHead = () => {
    const now = app.api.serverNow();
    const current = app.devices.get(device.id) ?? device;
    fill(head, dot(current),
      h("div", {},
        h("h1", { class: "camera-title" }, current.name),
        h("span", { class: "muted presence" }, presenceText(current, now))));
  };
  paintHead();
  const onChange = () => paintHead();
  app.devices.addEventListener("change", onChange);
  offs.push(() => app.devices.removeEventListener("change", onChange));

  fill(section,
    h("a", { class: "back", href: "#/cameras" }, "‹ Cameras"),
    head,
    h("a", { class: "button primary wide", href: `#/live/${device.id}` }, "▶ Watch live"),
    snapshot(app, device, offs),
    recordings(app, device, owner),
    h("dl", { class: "facts card" },
      h("dt", {}, "Model"), h("dd", {}, device.camera_model),
      h("dt", {}, "Firmware"), h("dd", {}, device.firmware_version),
      h("dt", {}, "Added"), h("dd", {}, new Date(device.activated_at).toLocaleDateString()),
      h("dt", {}, "Your access"), h("dd", {}, owner ? "Owner" : "Viewer (shared with you)")),
    owner ? ownerTools(app, device, paintHead) : h("p", { class: "muted" },
      "This camera was shared with you: you can watch it and see its events. Only its owner can rename, share or remove it."),
  );
}

// The picture now, without opening a live view (GET /devices/{id}/snapshot).
function snapshot(app, device, offs) {
  const error = errorBox();
  const image = h("img", { class: "snapshot", alt: `${device.name} now`, hidden: true });
  const button = h("button", { type: "button", class: "small" }, "Snapshot");
  let url = null;
  offs.push(() => url && URL.revokeObjectURL(url));
  button.addEventListener("click", () => busy(button, "Taking…", error, async () => {
    const blob = await app.api.blob(`/api/v1/devices/${device.id}/snapshot`);
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(blob);
    image.src = url;
    image.hidden = false;
  }));
  return h("div", { class: "card stack snapshot-card", "aria-label": "Snapshot" },
    h("span", { class: "with-button" }, h("h2", {}, "Picture now"), button), image, error);
}

// Recordings on request: the owner records the next minute; everyone with access plays them.
function recordings(app, device, owner) {
  const error = errorBox();
  const list = h("ul", { class: "recordings", "aria-label": "Recordings" });
  const load = async () => {
    const { media } = await app.api.get(`/api/v1/devices/${device.id}/media?kind=recording`);
    fill(list, media.length ? media.map((item) => h("li", { dataset: { mediaId: item.id, state: item.state } },
      h("span", {}, `${new Date(item.created_at).toLocaleString()} · `,
        item.state === "ready" ? `${Math.round(item.duration_s)} s` : "recording…"),
      item.content_url && h("video", { src: item.content_url, controls: true, preload: "metadata",
        "aria-label": "Recording" }))) : h("li", { class: "muted empty" }, "No recordings yet."));
  };
  const record = h("button", { type: "button", class: "small" }, "Record 1 min");
  record.addEventListener("click", () => busy(record, "Starting…", error, async () => {
    await app.api.post(`/api/v1/devices/${device.id}/recordings`, { duration_s: 60 });
    await load();
    app.notice("Recording the next minute. It appears here when it is done.");
  }));
  load().catch((failure) => { error.textContent = failure.message; error.hidden = false; });
  return h("div", { class: "card stack recordings-card", "aria-label": "Recordings" },
    h("span", { class: "with-button" }, h("h2", {}, "Recordings"), owner ? record : null),
    list, error);
}

function ownerTools(app, device, paintHead) {
  return [
    renameForm(app, device, paintHead), arming(app, device), shares(app, device),
    removal(app, device),
  ];
}

// Arm/Disarm and the analysis mode: a relay node watches an armed camera for motion and
// objects whether or not anyone is watching it.
function arming(app, device) {
  const error = errorBox();
  const state = h("p", { class: "muted analysis", role: "status" });
  const toggle = h("button", { type: "button", class: "arm" });
  const mode = h("select", { name: "analysis_mode", "aria-label": "When to analyse" },
    h("option", { value: "continuous" }, "All the time"),
    h("option", { value: "on_motion" }, "When the camera detects motion"));
  const paint = (current) => {
    Object.assign(device, current);
    app.devices.put(current);
    state.textContent = analysisText(current);
    state.dataset.state = current.analysis?.state ?? "";
    toggle.textContent = current.armed ? "Disarm" : "Arm";
    toggle.setAttribute("aria-pressed", String(current.armed));
    mode.value = current.analysis_mode;
  };
  const save = (change, label) => busy(toggle, label, error, async () => {
    paint(await app.api.patch(`/api/v1/devices/${device.id}`, change));
  });
  toggle.addEventListener("click", () => save({ armed: !device.armed }, "Saving…"));
  mode.addEventListener("change", () => save({ analysis_mode: mode.value }, "Saving…"));
  paint(device);
  return h("div", { class: "card stack arming", "aria-label": "Analysis" },
    h("h2", {}, "Analysis"),
    state,
    h("span", { class: "with-button" }, mode, toggle),
    h("p", { class: "hint" }, "Armed cameras are analysed for motion, people and vehicles even when nobody is watching; events appear in Events."),
    error);
}

function renameForm(app, device, paintHead) {
  const error = errorBox();
  const save = h("button", { type: "submit" }, "Rename");
  const form = h("form", { class: "card stack", novalidate: true, "aria-label": "Rename" },
    h("h2", {}, "Name"),
    h("span", { class: "with-button" },
      h("input", { name: "name", value: device.name, maxlength: 64, "aria-label": "Camera name" }),
      save),
    error);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { name } = fields(form);
    busy(save, "Saving…", error, async () => {
      if (!name) throw new Error("The name cannot be empty.");
      const renamed = await app.api.patch(`/api/v1/devices/${device.id}`, { name });
      device.name = renamed.name;
      app.devices.put(renamed);
      paintHead();
      app.notice(`Renamed to “${renamed.name}”.`);
    });
  });
  return form;
}

function shares(app, device) {
  const list = h("ul", { class: "shares", "aria-label": "People with access" });
  const listError = errorBox();
  const error = errorBox();
  const add = h("button", { type: "submit" }, "Share");
  const form = h("form", { class: "stack", novalidate: true, "aria-label": "Share" },
    h("label", {}, "Share with (email)",
      h("span", { class: "with-button" },
        h("input", { name: "email", type: "email", autocomplete: "off", inputmode: "email",
          placeholder: "friend@example.com" }),
        add)),
    h("p", { class: "hint" }, "They must already have an account. They can watch, not manage."),
    error);

  const paint = (items) => {
    fill(list, items.length ? items.map((share) => {
      const remove = h("button", { type: "button", class: "ghost small danger-text" }, "Remove");
      remove.addEventListener("click", async () => {
        const sure = await confirmAction("Stop sharing?",
          `${share.email} will no longer see “${device.name}”. Anything they are watching stops now.`,
          "Stop sharing");
        if (!sure) return;
        await busy(remove, "Removing…", listError, async () => {
          await app.api.delete(`/api/v1/devices/${device.id}/shares/${share.user_id}`);
          await load();
          app.notice(`${share.email} no longer has access.`);
        });
      });
      return h("li", { dataset: { userId: share.user_id, email: share.email } },
        h("span", { class: "share-text" },
          h("strong", {}, share.email),
          h("span", { class: "muted small" }, `Viewer since ${new Date(share.created_at).toLocaleDateString()}`)),
        remove);
    }) : h("li", { class: "muted empty" }, "Not shared with anyone."));
  };
  const load = async () => {
    try {
      listError.hidden = true;
      paint((await app.api.get(`/api/v1/devices/${device.id}/shares`)).shares);
    } catch (failure) {
      listError.textContent = failure.message;
      listError.hidden = false;
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { email } = fields(form);
    busy(add, "Sharing…", error, async () => {
      if (!/^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$/.test(email)) {
        throw new Error("Please enter the email address of their account.");
      }
      await app.api.post(`/api/v1/devices/${device.id}/shares`, { email, role: "viewer" });
      form.reset();
      await load();
      app.notice(`Shared with ${email}.`);
    });
  });
  load();
  return h("div", { class: "card stack sharing" }, h("h2", {}, "Sharing"), list, listError, form);
}

function removal(app, device) {
  const error = errorBox();
  const button = h("button", { type: "button", class: "danger wide" }, "Remove camera");
  button.addEventListener("click", async () => {
    const sure = await confirmAction("Remove this camera?",
      `“${device.name}” leaves your account and everyone it is shared with. To use it again, add it again with a new QR code.`,
      "Remove");
    if (!sure) return;
    await busy(button, "Removing…", error, async () => {
      await app.api.delete(`/api/v1/devices/${device.id}`);
      app.devices.forget(device.id);
      app.notice(`“${device.name}” was removed.`);
      app.navigate("#/cameras");
    });
  });
  return h("div", { class: "stack danger-zone" }, button, error);
}
