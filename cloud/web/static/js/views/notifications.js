// Notifications: push on this device (on/off, a test), what each camera notifies about and
// when it keeps quiet, and webhooks for integrations (docs/protocol.md, "Notifications").

import { busy, confirmAction, errorBox, fields, fill, h } from "../dom.js";
import * as push from "../push.js";

export const NAME = "notifications";

const KINDS = [["motion", "Motion"], ["person", "Person"], ["vehicle", "Vehicle"]];
const WORDS = Object.fromEntries(KINDS);

export function mount(app) {
  const section = h("section", { class: "notify" },
    h("h1", {}, "Notifications"),
    thisDevice(app),
    cameras(app),
    webhooks(app));
  app.main.append(section);
}

// push on this device -------------------------------------------------------------------

function thisDevice(app) {
  const state = h("p", { class: "push-state", role: "status" }, "Checking…");
  const error = errorBox();
  const toggle = h("button", { type: "button", class: "primary push-toggle", hidden: true });
  const test = h("button", { type: "button", class: "push-test", hidden: true }, "Send a test notification");
  let on = false;

  const paint = (subscription) => {
    on = subscription !== null;
    const why = push.unsupported();
    toggle.hidden = Boolean(why);
    test.hidden = Boolean(why) || !on;
    toggle.className = on ? "push-toggle" : "primary push-toggle";
    toggle.textContent = on ? "Turn off on this device" : "Turn on for this device";
    if (why) {
      state.dataset.state = "unsupported";
      state.textContent = why;
    } else if (push.permission() === "denied") {
      state.dataset.state = "denied";
      state.textContent = "Notifications are blocked for this site. Allow them in the browser's site settings to turn them on.";
    } else {
      state.dataset.state = on ? "on" : "off";
      state.textContent = on
        ? "On: this device shows a notification for each event of your cameras (as chosen below)."
        : "Off: this device shows no notifications.";
    }
  };
  const refresh = async () => {
    try {
      paint(await push.current(app.api));
    } catch (failure) {
      paint(null);
      error.textContent = failure.message;
      error.hidden = false;
    }
  };
  toggle.addEventListener("click", () => busy(toggle, on ? "Turning off…" : "Turning on…", error, async () => {
    if (on) {
      await push.disable(app.api);
      paint(null);
      app.notice("Notifications are off on this device.");
    } else {
      paint(await push.enable(app.api));
      app.notice("Notifications are on for this device.");
    }
  }).finally(() => paint(on ? {} : null)));
  test.addEventListener("click", () => busy(test, "Sending…", error, async () => {
    const { queued } = await app.api.post("/api/v1/push/test");
    app.notice(queued === 1
      ? "Test notification sent. It should appear in a moment."
      : `Test notification sent to your ${queued} devices.`);
  }));
  refresh();
  return h("div", { class: "card stack push-card", "aria-label": "This device" },
    h("h2", {}, "This device"), state, h("div", { class: "row" }, toggle, test), error);
}

// per camera: kinds and quiet hours ------------------------------------------------------

function cameras(app) {
  const list = h("ul", { class: "cards prefs", "aria-label": "Cameras" },
    h("li", { class: "muted" }, "Loading…"));
  const error = errorBox();
  app.api.get("/api/v1/notifications/preferences").then(({ preferences }) => {
    fill(list, preferences.length ? preferences.map((p) => preference(app, p))
      : h("li", { class: "muted empty" }, "No cameras yet. Notifications come from the cameras you own or that are shared with you."));
  }, (failure) => {
    fill(list);
    error.textContent = failure.message;
    error.hidden = false;
  });
  return h("div", { class: "card stack", "aria-label": "Per camera" },
    h("h2", {}, "What each camera tells you"),
    h("p", { class: "hint" }, "Every kind of event is on until you change it. During quiet hours no new notification comes (an event still appears in Events)."),
    list, error);
}

function checkbox(name, label, checked, value = "on") {
  return h("label", { class: "check" },
    h("input", { type: "checkbox", name, value, checked }), label);
}

function preference(app, pref) {
  const kinds = pref.kinds ?? [];
  const extra = kinds.filter((k) => !(k in WORDS)); // kinds chosen elsewhere stay chosen
  const all = checkbox("all", "Every kind", pref.kinds === null);
  const only = h("fieldset", { class: "kinds", disabled: pref.kinds === null },
    h("legend", {}, "Only these"),
    [...KINDS, ...extra.map((k) => [k, k])].map(([kind, label]) =>
      checkbox("kind", label, kinds.includes(kind), kind)));
  const quiet = pref.quiet_hours;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const quietOn = checkbox("quiet", "Quiet hours", quiet !== null);
  const times = h("div", { class: "row quiet-times", hidden: quiet === null },
    h("label", {}, "From", h("input", { type: "time", name: "start", value: quiet?.start ?? "22:00" })),
    h("label", {}, "To", h("input", { type: "time", name: "end", value: quiet?.end ?? "07:00" })),
    h("input", { type: "hidden", name: "timezone", value: quiet?.timezone ?? zone }),
    h("p", { class: "hint wide" }, `Times in ${quiet?.timezone ?? zone}.`));
  const save = h("button", { type: "submit", class: "small" }, "Save");
  const error = errorBox();
  const form = h("form", { class: "stack", novalidate: true, "aria-label": pref.device_name },
    h("strong", { class: "camera-name" }, pref.device_name),
    all, only, quietOn, times, h("div", { class: "row end" }, save), error);
  all.querySelector("input").addEventListener("change", (event) => {
    only.disabled = event.target.checked;
  });
  quietOn.querySelector("input").addEventListener("change", (event) => {
    times.hidden = !event.target.checked;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const values = fields(form);
    busy(save, "Saving…", error, async () => {
      const chosen = data.get("all") ? null : data.getAll("kind").map(String);
      if (chosen && chosen.length === 0) {
        throw new Error("Choose at least one kind, or “Every kind”. (To stop all notifications of this camera, choose only a kind it never reports.)");
      }
      const quietHours = data.get("quiet")
        ? { start: values.start, end: values.end, timezone: values.timezone }
        : null;
      if (quietHours && (!quietHours.start || !quietHours.end)) {
        throw new Error("Give quiet hours a start and an end time.");
      }
      await app.api.request("PUT", `/api/v1/notifications/preferences/${pref.device_id}`,
        { kinds: chosen, quiet_hours: quietHours });
      app.notice(`Saved for “${pref.device_name}”.`);
    });
  });
  return h("li", { class: "card pref", dataset: { deviceId: pref.device_id } }, form);
}

// webhooks ---------------------------------------------------------------------------------

function webhooks(app) {
  const list = h("ul", { class: "webhooks", "aria-label": "Webhooks" });
  const listError = errorBox();
  const secretBox = h("div", { class: "secret", role: "status", hidden: true });
  const error = errorBox();
  const add = h("button", { type: "submit" }, "Add");
  const form = h("form", { class: "stack", novalidate: true, "aria-label": "Add a webhook" },
    h("label", {}, "Endpoint URL",
      h("input", { name: "url", type: "url", inputmode: "url", autocomplete: "off",
        placeholder: "Your endpoint's https URL" })),
    h("fieldset", { class: "kinds" }, h("legend", {}, "Kinds (none chosen: every kind)"),
      KINDS.map(([kind, label]) => checkbox("kind", label, false, kind))),
    h("div", { class: "row end" }, add),
    error);

  const load = async () => {
    try {
      listError.hidden = true;
      const { webhooks: items } = await app.api.get("/api/v1/webhooks");
      fill(list, items.length ? items.map((hook) => webhook(app, hook, load, listError))
        : h("li", { class: "muted empty" }, "No webhooks."));
    } catch (failure) {
      listError.textContent = failure.message;
      listError.hidden = false;
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { url } = fields(form);
    const kinds = new FormData(form).getAll("kind").map(String);
    busy(add, "Adding…", error, async () => {
      if (!/^https?:\/\/\S+$/.test(url)) throw new Error("Enter the endpoint's full URL, beginning with https (or http).");
      const created = await app.api.post("/api/v1/webhooks", { url, kinds: kinds.length ? kinds : null });
      form.reset();
      fill(secretBox,
        h("strong", {}, "Signing secret for " + created.url),
        h("code", { class: "secret-value" }, created.secret),
        h("p", { class: "hint" }, "Copy it now: it is shown only this once. Your endpoint verifies each delivery with it (Standard Webhooks)."),
        h("button", { type: "button", class: "small ghost", onclick: () => { secretBox.hidden = true; } }, "Done"));
      secretBox.hidden = false;
      await load();
    });
  });
  load();
  return h("div", { class: "card stack webhooks-card", "aria-label": "Webhooks" },
    h("h2", {}, "Webhooks"),
    h("p", { class: "hint" }, "For integrations: each event of your cameras is POSTed, signed, to these URLs."),
    list, listError, secretBox, form);
}

function webhook(app, hook, reload, listError) {
  const remove = h("button", { type: "button", class: "ghost small danger-text" }, "Delete");
  const show = h("button", { type: "button", class: "ghost small" }, "Deliveries");
  const deliveries = h("ul", { class: "deliveries", "aria-label": "Recent deliveries", hidden: true });
  remove.addEventListener("click", async () => {
    const sure = await confirmAction("Delete this webhook?",
      `${hook.url} will receive no further events.`, "Delete");
    if (!sure) return;
    await busy(remove, "Deleting…", listError, async () => {
      await app.api.delete(`/api/v1/webhooks/${hook.id}`);
      await reload();
    });
  });
  show.addEventListener("click", () => busy(show, "Loading…", listError, async () => {
    if (!deliveries.hidden) {
      deliveries.hidden = true;
      return;
    }
    const { deliveries: items } = await app.api.get(`/api/v1/webhooks/${hook.id}/deliveries`);
    fill(deliveries, items.length ? items.map(delivery) : h("li", { class: "muted empty" }, "Nothing sent yet."));
    deliveries.hidden = false;
  }));
  const kinds = hook.kinds ? hook.kinds.map((k) => WORDS[k] ?? k).join(", ") : "Every kind";
  return h("li", { dataset: { webhookId: hook.id } },
    h("div", { class: "row" },
      h("span", { class: "share-text" },
        h("strong", { class: "webhook-url" }, hook.url),
        h("span", { class: "muted small" }, kinds),
        hook.enabled ? null : h("span", { class: "error small" },
          `Disabled: ${hook.disabled_reason ?? "it kept failing"}`)),
      show, remove),
    deliveries);
}

const STATUS = {
  delivered: "Delivered",
  pending: "Waiting",
  failed: "Failed, will retry",
  dead: "Given up",
};

function delivery(item) {
  const last = item.attempts.at(-1);
  const answer = last ? (last.status_code ? `HTTP ${last.status_code}` : last.error ?? "") : "";
  const tries = item.attempts.length === 1 ? "1 try" : `${item.attempts.length} tries`;
  return h("li", { dataset: { status: item.status } },
    h("span", { class: `badge status-${item.status}` }, STATUS[item.status] ?? item.status),
    " ", h("span", {}, item.type), " ",
    h("span", { class: "muted small" },
      `${new Date(item.created_at).toLocaleString()} · ${tries}${answer ? " · " + answer : ""}`),
    item.last_error && item.status !== "delivered"
      ? h("p", { class: "hint" }, item.last_error) : null);
}
