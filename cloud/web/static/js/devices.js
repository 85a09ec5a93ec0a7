// The signed-in user's cameras: loaded from GET /api/v1/devices, kept current by
// `device.presence` and `device.activated` messages. Views listen for "change".

export class Devices extends EventTarget {
  constructor(api, signaling) {
    super();
    this.api = api;
    this.list = [];
    this.loaded = false;
    this.loading = null;
    signaling.on("device.presence", (message) => this.#presence(message));
    signaling.on("device.activated", () => this.load().catch(() => {}));
    // after a reconnection, presence messages may have been missed
    signaling.addEventListener("state", (event) => {
      if (event.detail.state === "online" && this.loaded) this.load().catch(() => {});
    });
  }

  /** Fetch the list (concurrent callers share one request); rejects with ApiError. */
  load() {
    if (!this.loading) {
      this.loading = this.api.get("/api/v1/devices").then((body) => {
        this.list = body.devices;
        this.loaded = true;
        this.#changed();
        return this.list;
      }).finally(() => {
        this.loading = null;
      });
    }
    return this.loading;
  }

  get(id) {
    return this.list.find((device) => device.id === id) ?? null;
  }

  /** Replace or drop one device after a change made here (rename, removal). */
  put(device) {
    const index = this.list.findIndex((d) => d.id === device.id);
    if (index >= 0) this.list[index] = { ...this.list[index], ...device };
    else this.list.push(device);
    this.#changed();
  }

  forget(id) {
    this.list = this.list.filter((device) => device.id !== id);
    this.#changed();
  }

  clear() {
    this.list = [];
    this.loaded = false;
    this.#changed();
  }

  #presence({ device_id: id, online, last_seen: lastSeen }) {
    const device = this.get(id);
    if (!device) return;
    device.online = online;
    if (lastSeen) device.last_seen = lastSeen;
    this.#changed(id);
  }

  #changed(id = null) {
    this.dispatchEvent(new CustomEvent("change", { detail: { id } }));
  }
}
