// The browser app's service worker (served as /sw.js, scope "/"): the app shell offline,
// and Web Push notifications.
//
// Shell: every file of the app (SHELL) is cached at install. While online they come from the
// network (the server revalidates them: no stale code after a deploy) and the cache is
// refreshed; without a network (or when the network takes over NETWORK_WAIT_MS) they come
// from the cache, so the app opens and shows its own offline state, never the browser's
// error page. The API (/api/), media, sockets and the docs are never answered from the
// cache. Change VERSION whenever SHELL changes (tests/web/test_pwa.py checks that SHELL
// names every file in cloud/web/static/): the new worker caches the new list and deletes
// the old caches when it activates.
//
// Push: the payload is JSON {title, body, tag, image, renotify, event_id, device_id, kind,
// state, url}; one notification per tag (an event thread), replaced by the thread's next
// push; a click focuses the app (or opens it) at `url`.

const VERSION = "vc-shell-3";
const SHELL = [
  "/",
  "/manifest.webmanifest",
  "/static/app.css",
  "/static/icon.svg",
  "/static/icons/apple-touch-icon.png",
  "/static/icons/icon-192.png",
  "/static/icons/icon-512.png",
  "/static/icons/maskable-512.png",
  "/static/js/api.js",
  "/static/js/app.js",
  "/static/js/codecs.js",
  "/static/js/devices.js",
  "/static/js/dom.js",
  "/static/js/feed.js",
  "/static/js/live.js",
  "/static/js/push.js",
  "/static/js/sessionstats.js",
  "/static/js/signaling.js",
  "/static/js/words.js",
  "/static/js/views/add.js",
  "/static/js/views/auth.js",
  "/static/js/views/camera.js",
  "/static/js/views/cameras.js",
  "/static/js/views/events.js",
  "/static/js/views/notifications.js",
  "/static/js/views/stats.js",
  "/static/js/views/watch.js",
];
const IN_SHELL = new Set(SHELL);
const NETWORK_WAIT_MS = 4000;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(VERSION);
    // "reload": past the HTTP cache, so the new version caches what the server has now
    await cache.addAll(SHELL.map((path) => new Request(path, { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("vc-shell-") && name !== VERSION) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    // The app lives at "/" (its views are #hashes); other pages (/docs) are not the app's.
    if (url.pathname === "/") event.respondWith(fromNetworkOrShell(request, "/"));
    return;
  }
  if (IN_SHELL.has(url.pathname) && url.search === "") {
    event.respondWith(fromNetworkOrShell(request, url.pathname));
  }
  // Anything else (the API above all) goes to the network as if there were no worker.
});

/** The network's answer (kept in the cache), or the cached one when the network fails or is slow. */
async function fromNetworkOrShell(request, path) {
  const cache = await caches.open(VERSION);
  const network = fetch(request).then(async (response) => {
    if (response.ok && response.type === "basic") await cache.put(path, response.clone());
    return response;
  });
  network.catch(() => {}); // a late failure after the cache answered is no error
  let timer;
  const slow = new Promise((resolve) => {
    timer = setTimeout(resolve, NETWORK_WAIT_MS, null);
  });
  try {
    const first = await Promise.race([network, slow]);
    if (first) return first;
  } catch {
    // offline, or the server is unreachable: the cached copy below
  } finally {
    clearTimeout(timer);
  }
  const cached = await cache.match(path);
  if (cached) return cached;
  return network; // never cached (a first visit without a network): the network's own failure
}

self.addEventListener("push", (event) => {
  let payload = {};
  if (event.data) {
    try {
      payload = event.data.json();
    } catch {
      payload = { body: event.data.text() };
    }
  }
  const options = {
    body: payload.body ?? "",
    icon: "/static/icons/icon-192.png",
    data: payload,
  };
  if (payload.tag) {
    options.tag = String(payload.tag);
    options.renotify = Boolean(payload.renotify); // only valid with a tag
  }
  if (payload.image) options.image = payload.image;
  event.waitUntil(self.registration.showNotification(payload.title || "VisionConnect", options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  let target = new URL("/", self.location.origin);
  try {
    const asked = new URL(event.notification.data?.url ?? "/", self.location.origin);
    if (asked.origin === self.location.origin) target = asked;
  } catch {
    // not a URL: the app's start
  }
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = windows.find((w) => new URL(w.url).origin === self.location.origin);
    if (open) {
      await open.focus();
      open.postMessage({ type: "open", url: target.href }); // the app follows it (app.js)
      return;
    }
    await self.clients.openWindow(target.href);
  })());
});
