// An event feed: GET /api/v1/events pages ("Load more" follows next_cursor), updated live by
// `event` messages. One row per thread: a thread's `new`, `update`s and `end` update the same
// row. Snapshots need the Authorization header, so they are fetched as blobs and shown
// through object URLs (revoked when replaced or when the feed goes away).

import { errorBox, fill, h } from "./dom.js";
import { clockTime, kindText, scoreText } from "./words.js";

export class EventFeed {
  /** Filters: deviceId, kind (null: all). `limit` per page; `compact` hides paging. */
  constructor(app, { deviceId = null, kind = null, limit = 20, compact = false } = {}) {
    this.app = app;
    this.deviceId = deviceId;
    this.kind = kind;
    this.limit = limit;
    this.compact = compact;
    this.rows = new Map(); // thread_id -> {event, element, url}
    this.cursor = null;
    this.generation = 0;
    this.list = h("ul", { class: "events", "aria-label": "Events", "aria-live": "polite" });
    this.status = h("p", { class: "muted", role: "status" }, "Loading events…");
    this.error = errorBox();
    this.more = h("button", { type: "button", class: "wide", hidden: true }, "Load more");
    this.more.addEventListener("click", () => this.#page());
    this.element = h("div", { class: "feed" }, this.list, this.status, this.error, this.more);
    const offEvents = app.signaling.on("event", (event) => this.#push(event));
    // camera names come from the device list, which may arrive after the first page
    const onDevices = () => this.rows.forEach((row) => this.#paint(row));
    app.devices.addEventListener("change", onDevices);
    this.off = () => {
      offEvents();
      app.devices.removeEventListener("change", onDevices);
    };
  }

  /** (Re)load the first page with the current filters. */
  async load() {
    this.generation += 1;
    this.#clear();
    this.cursor = null;
    this.status.hidden = false;
    this.status.textContent = "Loading events…";
    await this.#page(true);
  }

  setFilters({ deviceId = null, kind = null }) {
    this.deviceId = deviceId;
    this.kind = kind;
    return this.load();
  }

  destroy() {
    this.off();
    this.generation += 1;
    this.#clear();
  }

  async #page(first = false) {
    const generation = this.generation;
    const query = new URLSearchParams({ limit: String(this.limit) });
    if (this.deviceId) query.set("device_id", this.deviceId);
    if (this.kind) query.set("kind", this.kind);
    if (!first && this.cursor) query.set("cursor", this.cursor);
    this.more.disabled = true;
    this.error.hidden = true;
    try {
      const page = await this.app.api.get(`/api/v1/events?${query}`);
      if (generation !== this.generation) return;
      for (const event of page.events) {
        if (!this.rows.has(event.thread_id)) this.#add(event, "end");
      }
      this.cursor = page.next_cursor;
    } catch (error) {
      if (generation !== this.generation) return;
      this.error.textContent = error.message;
      this.error.hidden = false;
    } finally {
      this.more.disabled = false;
    }
    this.more.hidden = this.compact || !this.cursor;
    this.#empty();
  }

  #push(event) {
    if (this.deviceId && event.device_id !== this.deviceId) return;
    if (this.kind && event.kind !== this.kind) return;
    const row = this.rows.get(event.thread_id);
    if (row) {
      row.event = { ...row.event, ...event };
      this.#paint(row);
    } else {
      this.#add(event, "start");
    }
    this.#empty();
  }

  #add(event, where) {
    const row = { event, element: h("li", { class: "event" }), url: null, snapshotFor: null, clip: null };
    this.rows.set(event.thread_id, row);
    if (where === "start") this.list.prepend(row.element);
    else this.list.append(row.element);
    this.#paint(row);
  }

  #paint(row) {
    const { event } = row;
    const device = this.app.devices.get(event.device_id);
    Object.assign(row.element.dataset, {
      threadId: event.thread_id, eventId: event.id, kind: event.kind, state: event.state,
      acknowledged: String(event.acknowledged), snapshot: row.url ? "loaded" : "none",
    });
    const image = h("img", { alt: `${kindText(event.kind)} snapshot`, hidden: !row.url, src: row.url ?? null });
    // The clip plays in place of the snapshot: a signed URL (docs/protocol.md, "Media"),
    // since a <video> cannot send the app's bearer token; it seeks with Range requests.
    const thumb = row.clip
      ? h("div", { class: "thumb clip" },
        h("video", { src: row.clip, controls: true, autoplay: true, muted: true, playsinline: true,
          "aria-label": `${kindText(event.kind)} clip` }))
      : h("div", { class: "thumb" }, image,
        !row.url && h("span", { class: "thumb-empty", "aria-hidden": "true" }, "◔"));
    const play = event.clip_id && !row.clip
      ? h("button", { type: "button", class: "small play-clip", onclick: () => this.#play(row) }, "▶ Clip")
      : null;
    const live = event.state !== "end";
    const ack = event.acknowledged
      ? h("span", { class: "acked" }, "✓ Seen")
      : h("button", { type: "button", class: "small ack", onclick: () => this.#ack(row) }, "Mark seen");
    const lasted = event.ended_at
      ? ` · ${Math.max(1, Math.round((Date.parse(event.ended_at) - Date.parse(event.started_at)) / 1000))} s`
      : "";
    fill(row.element,
      thumb,
      h("div", { class: "event-text" },
        h("span", { class: "event-title" },
          h("strong", {}, kindText(event.kind)),
          live ? h("span", { class: "badge live" }, "happening now") : ack),
        h("span", { class: "muted small" }, `${device?.name ?? "A camera"} · ${clockTime(event.started_at)}${lasted}`),
        h("span", { class: "event-foot" },
          h("span", { class: "muted small" }, scoreText(event.kind, event.score)),
          play,
          live ? ack : null)),
    );
    this.#snapshot(row);
  }

  async #snapshot(row) {
    const { event } = row;
    // one fetch per change: a thread's best picture may change with an update
    const key = event.snapshot_url ? `${event.snapshot_url}#${event.state}#${event.score}` : null;
    if (!key || key === row.snapshotFor) return;
    row.snapshotFor = key;
    try {
      const blob = await this.app.api.blob(event.snapshot_url);
      if (this.rows.get(event.thread_id) !== row || row.snapshotFor !== key) return;
      if (row.url) URL.revokeObjectURL(row.url);
      row.url = URL.createObjectURL(blob);
      this.#paint(row);
    } catch {
      if (row.snapshotFor === key) row.snapshotFor = null; // try again with the next change
    }
  }

  async #play(row) {
    try {
      const media = await this.app.api.get(`/api/v1/media/${row.event.clip_id}`);
      row.clip = media.content_url;
    } catch (error) {
      this.error.textContent = error.message;
      this.error.hidden = false;
      return;
    }
    this.#paint(row);
  }

  async #ack(row) {
    try {
      const event = await this.app.api.post(`/api/v1/events/${row.event.id}/ack`);
      row.event = { ...row.event, acknowledged: event.acknowledged };
    } catch (error) {
      this.error.textContent = error.message;
      this.error.hidden = false;
      return;
    }
    this.#paint(row);
  }

  #empty() {
    const none = this.rows.size === 0;
    this.status.hidden = !none;
    if (none) {
      this.status.textContent = this.deviceId
        ? "No events yet. Motion and detections appear here as they happen."
        : "No events yet. When a camera sees motion, a person or a vehicle, it shows up here.";
    }
  }

  #clear() {
    for (const row of this.rows.values()) if (row.url) URL.revokeObjectURL(row.url);
    this.rows.clear();
    this.list.replaceChildren();
  }
}
