// The app shell: services, the hash router, the header and tab bar, notices.
//
// Routes: #/signin #/register #/cameras #/add #/camera/<id> (also #/devices/<id>, where
// push notifications open) #/live/<id>[?mode=relay]
// #/events #/notifications #/stats. A view module exports mount(app, params, query) and returns its cleanup.

import { Api } from "./api.js";
import { Devices } from "./devices.js";
import { Signaling } from "./signaling.js";
import * as auth from "./views/auth.js";
import * as cameras from "./views/cameras.js";
import * as add from "./views/add.js";
import * as camera from "./views/camera.js";
import * as watch from "./views/watch.js";
import * as events from "./views/events.js";
import * as notifications from "./views/notifications.js";
import * as stats from "./views/stats.js";

const ROUTES = [
  { pattern: /^\/signin$/, view: auth, open: true, params: () => ({ mode: "signin" }) },
  { pattern: /^\/register$/, view: auth, open: true, params: () => ({ mode: "register" }) },
  { pattern: /^\/cameras$/, view: cameras, tab: "cameras" },
  { pattern: /^\/add$/, view: add, tab: "add" },
  { pattern: /^\/camera\/([\w-]+)$/, view: camera, tab: "cameras", params: (m) => ({ id: m[1] }) },
  // where a push notification opens (docs/protocol.md, "Notifications": /#/devices/<id>)
  { pattern: /^\/devices\/([\w-]+)$/, view: camera, tab: "cameras", params: (m) => ({ id: m[1] }) },
  { pattern: /^\/live\/([\w-]+)$/, view: watch, tab: "cameras", params: (m) => ({ id: m[1] }) },
  { pattern: /^\/events$/, view: events, tab: "events" },
  { pattern: /^\/notifications$/, view: notifications, tab: "notifications" },
  { pattern: /^\/stats$/, view: stats, tab: "stats" },
];

class App {
  constructor() {
    this.api = new Api();
    this.signaling = new Signaling(this.api);
    this.devices = new Devices(this.api, this.signaling);
    this.main = document.getElementById("view");
    this.noticeBox = document.getElementById("notice");
    this.cleanup = null;
    this.unseenEvents = 0;
    this.api.addEventListener("signedout", (event) => this.#signedOut(event.detail.message));
    this.signaling.addEventListener("state", (event) => this.#linkState(event.detail.state));
    this.signaling.on("event", (message) => this.#eventArrived(message));
    document.getElementById("sign-out").addEventListener("click", () => this.signOut());
    window.addEventListener("hashchange", () => this.route());
  }

  start() {
    if (this.api.signedIn) this.#signedIn();
    this.route();
    this.#installable();
  }

  // The installable app (cloud/web/sw.js): the worker keeps the shell for offline starts
  // and shows push notifications; a click on one brings the app to the notification's url.
  #installable() {
    window.addEventListener("online", () => this.#checkReachable());
    window.addEventListener("offline", () => this.#checkReachable());
    this.#checkReachable();
    if (!("serviceWorker" in navigator)) return;
    navigator.serviceWorker.addEventListener("message", (event) => {
      if (event.data?.type !== "open") return;
      const url = new URL(event.data.url, location.origin);
      if (url.origin === location.origin) location.href = url.href;
    });
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((error) => {
      console.warn("service worker not registered:", error);
    });
  }

  /** Offline: no network, or the server does not answer (checked again every few seconds). */
  async #checkReachable() {
    clearTimeout(this.reachTimer);
    // Asked of the server itself: navigator.onLine says false on a machine whose only
    // network is loopback, while its local server answers.
    let reachable;
    try {
      const response = await fetch("/healthz", { cache: "no-store", signal: AbortSignal.timeout(5000) });
      reachable = response.ok;
    } catch {
      reachable = false;
    }
    this.#setOffline(!reachable);
    if (!reachable) this.reachTimer = setTimeout(() => this.#checkReachable(), 5000);
  }

  #setOffline(offline) {
    const box = document.getElementById("offline");
    const was = !box.hidden;
    box.hidden = !offline;
    document.body.classList.toggle("offline", offline);
    if (was && !offline) this.route(); // back: the view loads again what it could not
  }

  navigate(hash) {
    if (location.hash === hash) this.route();
    else location.hash = hash;
  }

  /** A message at the top of the page; `kind` "error" or "info"; null hides it. */
  notice(text, kind = "info") {
    clearTimeout(this.noticeTimer);
    this.noticeBox.hidden = !text;
    this.noticeBox.textContent = text ?? "";
    this.noticeBox.dataset.kind = kind;
    if (text && kind === "info") {
      this.noticeTimer = setTimeout(() => this.notice(null), 6000);
    }
  }

  /** After a successful sign-in. */
  signedIn() {
    this.#signedIn();
    const next = this.afterSignIn;
    this.afterSignIn = null;
    this.navigate(next || "#/cameras");
  }

  async signOut() {
    await this.api.logout(); // dispatches "signedout"
  }

  route() {
    const [path, search = ""] = (location.hash.replace(/^#/, "") || "/cameras").split("?");
    let match = null;
    const route = ROUTES.find((r) => (match = r.pattern.exec(path))) ?? null;
    if (!route) {
      this.navigate(this.api.signedIn ? "#/cameras" : "#/signin");
      return;
    }
    if (!route.open && !this.api.signedIn) {
      this.afterSignIn = location.hash; // a notification's link, say: back there after
      this.navigate("#/signin");
      return;
    }
    if (route.open && this.api.signedIn) {
      this.navigate("#/cameras");
      return;
    }
    if (this.cleanup) this.cleanup();
    this.cleanup = null;
    this.main.replaceChildren();
    document.body.dataset.view = route.view.NAME;
    for (const tab of document.querySelectorAll("#tabs a")) {
      tab.classList.toggle("active", tab.dataset.tab === route.tab);
    }
    if (route.tab === "events") this.#setUnseen(0);
    const params = route.params ? route.params(match) : {};
    this.cleanup = route.view.mount(this, params, new URLSearchParams(search)) ?? null;
    this.main.focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }

  #signedIn() {
    document.getElementById("sign-out").hidden = false;
    document.getElementById("tabs").hidden = false;
    document.getElementById("link-state").hidden = false;
    document.body.classList.add("signed-in");
    this.signaling.start();
  }

  #signedOut(message) {
    this.signaling.stop();
    this.devices.clear();
    this.#setUnseen(0);
    document.getElementById("sign-out").hidden = true;
    document.getElementById("tabs").hidden = true;
    document.getElementById("link-state").hidden = true;
    document.body.classList.remove("signed-in");
    this.notice(message || null, "error");
    this.navigate("#/signin");
  }

  #linkState(state) {
    const box = document.getElementById("link-state");
    box.dataset.state = state;
    box.querySelector(".link-text").textContent = {
      online: "Live",
      connecting: "Connecting…",
      offline: "Offline",
    }[state];
    box.title = state === "online"
      ? "Connected: camera status and events update live"
      : "Not connected: reconnecting";
  }

  #eventArrived(message) {
    if (message.state === "new" && document.body.dataset.view !== "events") {
      this.#setUnseen(this.unseenEvents + 1);
    }
  }

  #setUnseen(count) {
    this.unseenEvents = count;
    const tab = document.querySelector('#tabs a[data-tab="events"]');
    if (count) tab.dataset.badge = count > 9 ? "9+" : String(count);
    else delete tab.dataset.badge;
  }
}

const app = new App();
window.visionconnect = app; // for debugging from the console
app.start();
