// Stats: your own cameras at a glance over the last 7 days (GET /api/v1/stats): online
// now, events per day and kind, sessions by route, time to first frame, storage.

import { errorBox, fill, h } from "../dom.js";

export const NAME = "stats";

const ROUTES = [["p2p", "Direct"], ["turn", "Through TURN"], ["relay", "Through a relay node"]];
const KINDS = { motion: "Motion", person: "Person", vehicle: "Vehicle" };

export function mount(app) {
  const body = h("div", { class: "stack stats-body", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading…"));
  const error = errorBox();
  app.main.append(h("section", { class: "stats" }, h("h1", {}, "Stats"), error, body));
  let live = true;
  app.api.get("/api/v1/stats").then((stats) => {
    if (live) fill(body, ...render(stats));
  }).catch((failure) => {
    if (!live) return;
    fill(body);
    error.textContent = failure.message;
    error.hidden = false;
  }).finally(() => body.removeAttribute("aria-busy"));
  return () => { live = false; };
}

function render(stats) {
  return [cameras(stats), events(stats), sessions(stats), storage(stats)];
}

function card(label, ...children) {
  return h("div", { class: "card stack stats-card", "aria-label": label }, h("h2", {}, label), ...children);
}

function figure(name, value, unit = "") {
  return h("p", { class: "stats-figure", dataset: { stat: name } },
    h("strong", { class: "stats-value" }, String(value)), unit ? ` ${unit}` : "");
}

function cameras({ cameras: c }) {
  return card("Cameras",
    figure("online", `${c.online} of ${c.owned}`, c.owned === 1 ? "camera online" : "cameras online"));
}

function events({ events_per_day: days, window_days: window }) {
  const total = days.reduce((sum, d) => sum + d.total, 0);
  const most = Math.max(1, ...days.map((d) => d.total));
  const rows = days.map((d) => {
    const kinds = Object.entries(d.by_kind).map(([k, n]) => `${KINDS[k] ?? k} ${n}`).join(", ");
    const day = new Date(`${d.day}T00:00:00Z`).toLocaleDateString(undefined, { weekday: "short", day: "numeric", timeZone: "UTC" });
    return h("li", { class: "stats-day", dataset: { day: d.day, total: d.total } },
      h("span", { class: "stats-day-name" }, day),
      h("progress", { max: most, value: d.total, "aria-label": `${d.total} events` }),
      h("span", { class: "stats-day-count" }, String(d.total)),
      kinds ? h("span", { class: "muted stats-day-kinds" }, kinds) : null);
  });
  return card("Events",
    figure("events", total, `events in ${window} days`),
    h("ol", { class: "stats-days" }, rows));
}

function sessions({ sessions_by_route: routes, median_ttff_ms: ttff }) {
  return card("Live viewing",
    h("ul", { class: "stats-routes" },
      ROUTES.map(([route, label]) => h("li", { dataset: { route } },
        h("span", {}, label), " ", h("strong", {}, String(routes[route] ?? 0))))),
    figure("ttff", ttff === null ? "–" : (ttff / 1000).toFixed(1),
      ttff === null ? "no time to first picture yet" : "s median time to first picture"));
}

function storage({ storage: s }) {
  const percent = s.quota_bytes ? Math.min(100, Math.round((100 * s.used_bytes) / s.quota_bytes)) : 0;
  return card("Storage",
    figure("storage", `${size(s.used_bytes)} of ${size(s.quota_bytes)}`, `used (${percent}%)`),
    h("progress", { max: s.quota_bytes || 1, value: s.used_bytes, "aria-label": "Storage used" }),
    h("p", { class: "muted" }, `Clips and recordings are kept ${s.retention_days} days.`));
}

function size(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 10 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}
