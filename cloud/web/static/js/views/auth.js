// Sign in and create an account.

import { busy, errorBox, fields, h } from "../dom.js";

export const NAME = "auth";

export function mount(app, { mode }) {
  const register = mode === "register";
  const error = errorBox();
  const submit = h("button", { type: "submit", class: "primary wide" },
    register ? "Create account" : "Sign in");
  const form = h("form", { class: "card stack", novalidate: true, "aria-label": register ? "Create account" : "Sign in" },
    h("label", {}, "Email",
      h("input", { name: "email", type: "email", autocomplete: "email", required: true, inputmode: "email" })),
    h("label", {}, "Password",
      h("input", {
        name: "password",
        type: "password",
        autocomplete: register ? "new-password" : "current-password",
        required: true,
      })),
    register && h("p", { class: "hint" },
      "At least 10 characters; not a common password and not your email address."),
    error,
    submit,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { email, password } = fields(form);
    busy(submit, register ? "Creating…" : "Signing in…", error, async () => {
      if (!/^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$/.test(email)) {
        throw new Error("Please enter a valid email address.");
      }
      if (!password) throw new Error("Please enter your password.");
      if (register) await app.api.register(email, password);
      await app.api.login(email, password);
      app.notice(register ? "Welcome! Your account is ready." : null);
      app.signedIn();
    });
  });
  app.main.append(
    h("section", { class: "auth" },
      h("div", { class: "hero" },
        h("img", { src: "/static/icon.svg", alt: "", width: 56, height: 56 }),
        h("h1", {}, register ? "Create your account" : "Sign in"),
        h("p", { class: "muted" }, "Watch your cameras live, from anywhere."),
      ),
      form,
      h("p", { class: "switch" },
        register ? "Already have an account? " : "New here? ",
        h("a", { href: register ? "#/signin" : "#/register" },
          register ? "Sign in" : "Create an account")),
    ),
  );
  form.elements.namedItem("email").focus();
  return null;
}
