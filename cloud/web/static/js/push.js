// Web Push on this device: the browser's PushSubscription, made with the cloud's VAPID key
// and handed to the cloud (docs/protocol.md, "Notifications"). The service worker
// (/sw.js) shows what arrives.

const READY_TIMEOUT_MS = 10000;

export class PushError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Why push cannot work in this browser, or null when it can. */
export function unsupported() {
  if (!window.isSecureContext) {
    return "Notifications need a secure connection (https). Open VisionConnect over https to turn them on.";
  }
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    return "This browser cannot receive push notifications. On an iPhone or iPad, add VisionConnect to the Home Screen first (Share, then Add to Home Screen) and open it from there.";
  }
  return null;
}

/** "granted", "denied" or "default" (not asked yet). */
export function permission() {
  return "Notification" in window ? Notification.permission : "denied";
}

async function registration() {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new PushError("no_worker",
      "The app's service worker is not running. Reload the page and try again.")), READY_TIMEOUT_MS);
  });
  try {
    return await Promise.race([navigator.serviceWorker.ready, late]);
  } finally {
    clearTimeout(timer);
  }
}

function keyBytes(base64url) {
  const padded = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (base64url.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

function sameKey(subscription, key) {
  const current = subscription.options?.applicationServerKey;
  if (!current) return true; // the browser does not say: assume it is ours
  const a = new Uint8Array(current);
  return a.length === key.length && a.every((byte, i) => byte === key[i]);
}

/** This device's subscription as the cloud knows it ({id, endpoint, ...}), or null. */
export async function current(api) {
  if (unsupported()) return null;
  const subscription = await (await registration()).pushManager.getSubscription();
  if (!subscription) return null;
  const { subscriptions } = await api.get("/api/v1/push/subscriptions");
  return subscriptions.find((s) => s.endpoint === subscription.endpoint) ?? null;
}

/** Ask for permission, subscribe with the cloud's key, register it with the cloud. */
export async function enable(api) {
  const why = unsupported();
  if (why) throw new PushError("unsupported", why);
  const answer = await Notification.requestPermission();
  if (answer === "denied") {
    throw new PushError("denied",
      "Notifications are blocked for this site. Allow them in the browser's site settings, then try again.");
  }
  if (answer !== "granted") {
    throw new PushError("dismissed", "Notifications were not allowed. Press the button again to be asked again.");
  }
  const { public_key: publicKey } = await api.get("/api/v1/push/vapid");
  const key = keyBytes(publicKey);
  const manager = (await registration()).pushManager;
  let subscription = await manager.getSubscription();
  if (subscription && !sameKey(subscription, key)) {
    await subscription.unsubscribe(); // made with another key: the push service would refuse ours
    subscription = null;
  }
  if (!subscription) {
    try {
      subscription = await manager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    } catch (error) {
      throw new PushError("subscribe_failed",
        `The browser's push service did not take the subscription (${error.message || error.name}). Try again later.`);
    }
  }
  try {
    return await api.post("/api/v1/push/subscriptions", subscription.toJSON());
  } catch (error) {
    await subscription.unsubscribe().catch(() => {}); // nothing half-done on this device
    throw error;
  }
}

/** Forget this device's subscription: in the browser and in the cloud. */
export async function disable(api) {
  if (unsupported()) return;
  const subscription = await (await registration()).pushManager.getSubscription();
  if (!subscription) return;
  const { subscriptions } = await api.get("/api/v1/push/subscriptions");
  const known = subscriptions.find((s) => s.endpoint === subscription.endpoint);
  if (known) await api.delete(`/api/v1/push/subscriptions/${known.id}`);
  await subscription.unsubscribe();
}
