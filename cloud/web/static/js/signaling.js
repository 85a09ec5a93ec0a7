// The signaling WebSocket /ws/v1/client (docs/protocol.md, "WebSocket signaling").
//
// Held open while signed in: `hello` with a fresh access token, `welcome`, an application
// `ping` every `heartbeat_s`. A connection that drops is reopened with exponential backoff
// and full jitter (0.5 s doubling to 30 s); `go_away` reconnects after the delay it gives; a
// refused hello (close 4401: the token expired meanwhile) refreshes the token and reconnects
// at once. Every (re)connection asks the Api for its token, so it always uses a fresh one.
//
// Incoming messages are dispatched as events named by their `type` (detail: the message).
// `request()` sends a message with an `id` and resolves with the first reply carrying it
// (`session.created`, `session.end` or `status`), or rejects on timeout or disconnection.

const OPEN_TIMEOUT_MS = 10000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
const CLOSE_UNAUTHENTICATED = 4401;

export class SignalingError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Signaling extends EventTarget {
  constructor(api, url = Signaling.defaultUrl()) {
    super();
    this.api = api;
    this.url = url;
    this.state = "offline"; // offline | connecting | online
    this.socket = null;
    this.running = false;
    this.backoffMs = BACKOFF_FIRST_MS;
    this.retryTimer = null;
    this.heartbeat = null;
    this.lastHeard = 0;
    this.refreshedForHello = false;
    this.waiting = new Map(); // request id -> {resolve, reject, timer}
    this.onNetwork = () => this.#reconnectSoon(0);
  }

  static defaultUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/v1/client`;
  }

  start() {
    if (this.running) return;
    this.running = true;
    window.addEventListener("online", this.onNetwork);
    this.#connect();
  }

  stop() {
    this.running = false;
    window.removeEventListener("online", this.onNetwork);
    clearTimeout(this.retryTimer);
    this.#drop("signed out");
  }

  /** Send one message; false when not connected (the caller shows that). */
  send(message) {
    if (this.state !== "online") return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /** Send `message` with a fresh id; resolve with the reply that echoes it. */
  request(message, timeoutMs = 10000) {
    const id = message.id ?? newId();
    return new Promise((resolve, reject) => {
      if (!this.send({ ...message, id })) {
        reject(new SignalingError("offline", "Not connected to the service. Trying to reconnect…"));
        return;
      }
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new SignalingError("timeout", "The service did not answer in time."));
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
    });
  }

  /** Subscribe to one message type; returns the function that unsubscribes. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  async #connect() {
    clearTimeout(this.retryTimer);
    if (!this.running || this.socket) return;
    this.#setState("connecting");
    let token;
    try {
      token = await this.api.accessToken();
    } catch {
      this.#setState("offline");
      if (this.api.signedIn) this.#reconnectSoon();
      return; // signed out: the app stops us
    }
    if (!this.running || this.socket) return;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    const opening = setTimeout(() => socket.close(), OPEN_TIMEOUT_MS); // open + welcome
    socket.onopen = () => socket.send(JSON.stringify({ type: "hello", token }));
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.lastHeard = Date.now();
      if (message.type === "welcome") {
        clearTimeout(opening);
        this.backoffMs = BACKOFF_FIRST_MS;
        this.refreshedForHello = false;
        this.#startHeartbeat(socket, message.heartbeat_s);
        this.#setState("online");
        return;
      }
      this.#dispatch(message, socket);
    };
    socket.onclose = (event) => {
      clearTimeout(opening);
      if (this.socket !== socket) return;
      this.#drop(event.reason || `closed (${event.code})`);
      if (!this.running) return;
      if (event.code === CLOSE_UNAUTHENTICATED && !this.refreshedForHello) {
        this.refreshedForHello = true; // once: a second refusal waits like any failure
        this.api.refresh().then(() => this.#reconnectSoon(0), () => this.#reconnectSoon());
      } else {
        this.#reconnectSoon();
      }
    };
  }

  #dispatch(message, socket) {
    const waiter = message.id !== undefined ? this.waiting.get(message.id) : undefined;
    const isReply = ["session.created", "session.end", "status"].includes(message.type);
    if (waiter && isReply) {
      clearTimeout(waiter.timer);
      this.waiting.delete(message.id);
      waiter.resolve(message);
      if (message.type !== "session.end") return;
    }
    if (message.type === "go_away") {
      this.#drop("the service asked to reconnect");
      socket.close(1000);
      this.#reconnectSoon(message.reconnect_after_ms ?? 0);
      return;
    }
    if (message.type === "ping") {
      socket.send(JSON.stringify({ type: "pong", id: message.id }));
      return;
    }
    this.dispatchEvent(new CustomEvent(message.type, { detail: message }));
  }

  #startHeartbeat(socket, heartbeatS) {
    clearInterval(this.heartbeat);
    const everyMs = Math.max(1, heartbeatS || 20) * 1000;
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeard > 2 * everyMs + 10000) {
        socket.close(4000, "no answer from the service"); // a dead link: reconnect
        return;
      }
      socket.send(JSON.stringify({ type: "ping" }));
    }, everyMs);
  }

  /** Forget the current socket; pending requests fail; listeners hear "disconnected". */
  #drop(why) {
    clearInterval(this.heartbeat);
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
    for (const [id, waiter] of this.waiting) {
      clearTimeout(waiter.timer);
      waiter.reject(new SignalingError("offline", "Lost the connection to the service."));
      this.waiting.delete(id);
    }
    const was = this.state;
    this.#setState("offline");
    if (was === "online") this.dispatchEvent(new CustomEvent("disconnected", { detail: { why } }));
  }

  #reconnectSoon(delayMs) {
    if (!this.running) return;
    clearTimeout(this.retryTimer);
    let wait = delayMs;
    if (wait === undefined) {
      wait = Math.random() * this.backoffMs; // full jitter
      this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    }
    this.retryTimer = setTimeout(() => this.#connect(), wait);
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state } }));
  }
}
