// Building elements without innerHTML: names, emails and messages are always text.

/**
 * h("button", {class: "primary", onclick: fn, dataset: {id}}, "Save") -> <button>.
 * Props: `class`, `dataset`, `on<event>` handlers, booleans (`hidden`, `disabled`), other
 * attributes as strings. Children: nodes, strings, numbers; null/false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (value === true) element.setAttribute(key, "");
    else if (key in element && typeof value !== "string") element[key] = value;
    else element.setAttribute(key, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** Replace the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A form's fields as an object of trimmed strings (passwords untrimmed). */
export function fields(form) {
  const values = {};
  for (const [name, value] of new FormData(form)) {
    const input = form.elements.namedItem(name);
    values[name] = input?.type === "password" ? String(value) : String(value).trim();
  }
  return values;
}

/**
 * Run `action` for a form submission: the button shows `busyText` and is disabled until it
 * settles; an error's message goes into `errorBox`.
 */
export async function busy(button, busyText, errorBox, action) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = busyText;
  if (errorBox) errorBox.hidden = true;
  try {
    return await action();
  } catch (error) {
    if (!errorBox) throw error;
    errorBox.textContent = error.message || "Something went wrong. Please try again.";
    errorBox.hidden = false;
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

/** Ask with the page's <dialog>; resolves true when confirmed. */
export function confirmAction(title, text, okLabel) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector(".confirm-title").textContent = title;
  dialog.querySelector(".confirm-text").textContent = text;
  dialog.querySelector(".confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

export function errorBox() {
  return h("p", { class: "error", role: "alert", hidden: true });
}
