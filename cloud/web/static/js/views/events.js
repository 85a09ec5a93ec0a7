// All events, newest first, with camera and kind filters.

import { h } from "../dom.js";
import { EventFeed } from "../feed.js";

export const NAME = "events";

const KINDS = [["", "All kinds"], ["motion", "Motion"], ["person", "Person"], ["vehicle", "Vehicle"]];

export function mount(app, _params, query) {
  const feed = new EventFeed(app, { deviceId: query.get("device") || null });
  const camera = h("select", { name: "device", "aria-label": "Camera" });
  const kind = h("select", { name: "kind", "aria-label": "Kind" },
    KINDS.map(([value, label]) => h("option", { value }, label)));
  const options = () => {
    const chosen = camera.value || feed.deviceId || "";
    camera.replaceChildren(h("option", { value: "" }, "All cameras"),
      ...app.devices.list.map((d) => h("option", { value: d.id }, d.name)));
    camera.value = chosen;
  };
  options();
  const onChange = () => options();
  app.devices.addEventListener("change", onChange);
  const apply = () => feed.setFilters({ deviceId: camera.value || null, kind: kind.value || null });
  camera.addEventListener("change", apply);
  kind.addEventListener("change", apply);
  app.main.append(
    h("section", {},
      h("h1", {}, "Events"),
      h("div", { class: "filters" }, camera, kind),
      feed.element));
  if (!app.devices.loaded) app.devices.load().catch(() => {});
  feed.load();
  return () => {
    feed.destroy();
    app.devices.removeEventListener("change", onChange);
  };
}
