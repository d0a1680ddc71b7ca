// The single page: a hash router over the shop, my orders, an order and the operator console.

import { currentSession, get, logOut, onSessionChange } from "./api.js";
import { dropPageError, h, replace } from "./dom.js";
import { renderShop } from "./shop.js";
import { renderOrders, renderOrder } from "./orders.js";
import { renderConsole } from "./console.js";

const view = document.getElementById("view");
let config = { temporal_ui_url: null, temporal_namespace: "default", demo_controls: false };
let cleanup = null; // what the current page stops when leaving (timers, streams)

function header() {
  const session = currentSession();
  const who = document.getElementById("who");
  document.getElementById("nav-console").hidden = !(session && session.role === "admin");
  if (session) {
    replace(
      who,
      h("span", {}, `Signed in as ${session.name}`, session.role === "admin" ? " (admin)" : ""),
      " ",
      h("button", { type: "button", class: "link", onclick: () => logOut() }, "Log out"),
    );
  } else {
    replace(who, h("a", { href: "#/shop" }, "Log in or sign up"));
  }
}

let generation = 0; // which route() drew the current page

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  dropPageError();
  const mine = ++generation;
  const hash = location.hash || "#/shop";
  const [, page, id] = hash.split("/");
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  replace(view);
  // A page left while it was still loading registers its timers after the next page came: stop
  // them at once rather than let them run (and speak) under another page.
  const setCleanup = (fn) => {
    if (mine === generation) cleanup = fn;
    else fn();
  };
  const context = { view, config, setCleanup };
  if (page === "orders" && id) await renderOrder(context, id);
  else if (page === "orders") await renderOrders(context);
  else if (page === "console") await renderConsole(context);
  else await renderShop(context);
  // Move focus to the new page's heading, as a page load would for a screen reader.
  const heading = view.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}

onSessionChange(() => {
  header();
  route();
});
window.addEventListener("hashchange", route);

(async () => {
  try {
    config = await get("/web/config.json");
  } catch {
    // without it: no Temporal link, no demo controls
  }
  header();
  route();
})();
