// The HTTP API client (docs/protocol.md, "HTTP API"): JSON in and out, every failure an ApiError
// carrying the API's own sentence, and the access token kept fresh without the user noticing.
//
// Tokens live in sessionStorage, not localStorage: they survive a reload of the tab but not
// its closing, and other tabs (or a later visitor of a shared computer) do not inherit a
// 30-day refresh token. The cost: each new tab signs in again. A duplicated tab copies the
// storage; if both tabs then refresh, the server sees a reused refresh token and signs both
// out (its reuse detection working as designed), so the user simply signs in again.
//
// Refresh: the access token is renewed REFRESH_MARGIN_S before it expires (a timer, and a
// check before each request), and a request answered 401 is retried once after a refresh.
// Refreshes are single-flight: refresh tokens rotate, and presenting one twice would revoke
// the whole sign-in.

const STORAGE_KEY = "visionconnect.session";
const TIMEOUT_MS = 15000;
const REFRESH_MARGIN_S = 60;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api extends EventTarget {
  constructor(storage = window.sessionStorage) {
    super();
    this.storage = storage;
    this.session = this.#load();
    this.skewMs = 0; // server clock minus ours, from the Date header
    this.refreshing = null;
    this.refreshTimer = null;
    this.#schedule();
  }

  get signedIn() {
    return this.session !== null;
  }

  get email() {
    return this.session?.email ?? "";
  }

  /** Milliseconds since the epoch on the server's clock (expiry countdowns use it). */
  serverNow() {
    return Date.now() + this.skewMs;
  }

  async register(email, password) {
    return this.request("POST", "/api/v1/auth/register", { email, password }, { auth: false });
  }

  async login(email, password) {
    const pair = await this.request(
      "POST", "/api/v1/auth/login", { email, password }, { auth: false },
    );
    this.#store(pair, email.trim().toLowerCase());
  }

  /** Revoke the refresh token (best effort: signing out locally never fails). */
  async logout() {
    const session = this.session;
    if (session) {
      try {
        await this.request("POST", "/api/v1/auth/logout", { refresh_token: session.refresh }, {
          retry: false,
        });
      } catch {
        // already expired or unreachable: forgetting the tokens is what matters here
      }
    }
    this.#forget("");
  }

  /** A valid access token, refreshed first when it expires within REFRESH_MARGIN_S. */
  async accessToken() {
    if (!this.session) throw new ApiError(401, "unauthenticated", "Please sign in.");
    if (this.session.expiresAt - Date.now() < REFRESH_MARGIN_S * 1000) await this.refresh();
    return this.session.access;
  }

  /** Rotate the token pair; concurrent callers share one request. */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = this.#refresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async #refresh() {
    const session = this.session;
    if (!session) throw new ApiError(401, "unauthenticated", "Please sign in.");
    let pair;
    try {
      pair = await this.request(
        "POST", "/api/v1/auth/refresh", { refresh_token: session.refresh }, { auth: false },
      );
    } catch (error) {
      if (error.status === 401 || error.status === 422) {
        this.#forget("Your session has ended. Please sign in again.");
      }
      throw error;
    }
    if (this.session === session) {
      this.#store(pair, session.email);
      this.dispatchEvent(new Event("refreshed"));
    }
  }

  /**
   * One API call. Resolves with the parsed JSON body (null for 204), rejects with ApiError.
   * `auth` sends the access token; `retry` refreshes and retries once on a 401.
   */
  async request(method, path, body = undefined, { auth = true, retry = true, blob = false } = {}) {
    const headers = { Accept: blob ? "*/*" : "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) headers.Authorization = `Bearer ${await this.accessToken()}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(TIMEOUT_MS),
        cache: "no-store",
      });
    } catch (error) {
      if (error.name === "TimeoutError") {
        throw new ApiError(0, "timeout", "The server did not answer in time. Please try again.");
      }
      throw new ApiError(0, "network", "Cannot reach the server. Check your connection.");
    }
    this.#clock(response);
    if (response.status === 401 && auth && retry && this.session) {
      await this.refresh();
      return this.request(method, path, body, { auth, retry: false, blob });
    }
    if (!response.ok) throw await this.#error(response);
    if (blob) return response.blob();
    if (response.status === 204) return null;
    return response.json();
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path, body = {}) {
    return this.request("POST", path, body);
  }

  patch(path, body) {
    return this.request("PATCH", path, body);
  }

  delete(path) {
    return this.request("DELETE", path);
  }

  /** A binary resource behind the Authorization header (event snapshots). */
  blob(path) {
    return this.request("GET", path, undefined, { blob: true });
  }

  async #error(response) {
    let detail = null;
    try {
      detail = (await response.json()).error;
    } catch {
      // not the API's error shape (a proxy's page, say): fall back to the status
    }
    if (detail?.message) {
      const message = detail.message.charAt(0).toUpperCase() + detail.message.slice(1);
      return new ApiError(response.status, detail.code, message);
    }
    const words = response.status >= 500
      ? "The service is having trouble right now. Please try again shortly."
      : `The request failed (HTTP ${response.status}).`;
    return new ApiError(response.status, "http_error", words);
  }

  #clock(response) {
    const date = Date.parse(response.headers.get("Date") ?? "");
    if (!Number.isNaN(date)) this.skewMs = date + 500 - Date.now(); // Date has 1 s resolution
  }

  #store(pair, email) {
    this.session = {
      access: pair.access_token,
      refresh: pair.refresh_token,
      expiresAt: Date.now() + pair.expires_in * 1000,
      email,
    };
    this.storage.setItem(STORAGE_KEY, JSON.stringify(this.session));
    this.#schedule();
  }

  #forget(message) {
    const was = this.session !== null;
    this.session = null;
    this.storage.removeItem(STORAGE_KEY);
    this.#schedule();
    if (was) this.dispatchEvent(new CustomEvent("signedout", { detail: { message } }));
  }

  #load() {
    try {
      const session = JSON.parse(this.storage.getItem(STORAGE_KEY) ?? "null");
      if (session?.access && session?.refresh && session?.expiresAt) return session;
    } catch {
      // unreadable: start signed out
    }
    return null;
  }

  #schedule() {
    clearTimeout(this.refreshTimer);
    if (!this.session) return;
    const due = this.session.expiresAt - REFRESH_MARGIN_S * 1000 - Date.now();
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch(() => {}); // failures sign out (above) or retry on the next call
    }, Math.max(1000, due));
  }
}
