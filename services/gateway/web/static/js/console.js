// The operator console (admin): orders by status and reason with filters and pages, the review
// queue, fulfilment, failed compensations with retry, stock levels, and the demo controls when
// `ordersaga up` runs them.

import { allPages, currentSession, get, post, put, request } from "./api.js";
import { announce, errorText, field, h, replace } from "./dom.js";
import { ordersTable } from "./orders.js";

// services/orders/domain.py's OrderStatus and CancelReason.
const STATUSES = ["PENDING", "AWAITING_REVIEW", "CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED"];
const REASONS = [
  "user_invalid", "invalid_item", "out_of_stock", "invalid_payment_method", "payment_declined",
  "payment_failed", "customer_cancelled", "review_rejected", "review_timeout", "operator_cancelled",
  "saga_terminated", "internal_error",
];
const REFRESH_MS = 3000;

export async function renderConsole({ view, config, setCleanup }) {
  const session = currentSession();
  if (!session || session.role !== "admin") {
    replace(view, h("h1", {}, "Operator console"), h("p", {}, "The console needs an admin: ", h("a", { href: "#/shop" }, "log in"), " as one."));
    return;
  }
  const sections = {
    orders: h("section", { class: "panel", "aria-labelledby": "c-orders-h", id: "console-orders" }),
    review: h("section", { class: "panel", "aria-labelledby": "c-review-h", id: "console-review" }),
    fulfilment: h("section", { class: "panel", "aria-labelledby": "c-fulfil-h", id: "console-fulfilment" }),
    compensations: h("section", { class: "panel", "aria-labelledby": "c-comp-h", id: "console-compensations" }),
    stock: h("section", { class: "panel", "aria-labelledby": "c-stock-h", id: "console-stock" }),
    demo: config.demo_controls ? h("section", { class: "panel", "aria-labelledby": "c-demo-h", id: "console-demo" }) : null,
  };
  replace(
    view,
    h("h1", {}, "Operator console"),
    h(
      "nav",
      { "aria-label": "Console sections", class: "jump" },
      h("a", { href: "#/console", onclick: jump("console-orders") }, "Orders"),
      h("a", { href: "#/console", onclick: jump("console-review") }, "Review queue"),
      h("a", { href: "#/console", onclick: jump("console-fulfilment") }, "Fulfilment"),
      h("a", { href: "#/console", onclick: jump("console-compensations") }, "Failed compensations"),
      h("a", { href: "#/console", onclick: jump("console-stock") }, "Stock"),
      sections.demo ? h("a", { href: "#/console", onclick: jump("console-demo") }, "Demo controls") : null,
    ),
    sections.demo,
    sections.review,
    sections.orders,
    sections.fulfilment,
    sections.compensations,
    sections.stock,
  );
  ordersSection(sections.orders);
  const refreshReview = reviewSection(sections.review);
  const refreshFulfilment = fulfilmentSection(sections.fulfilment);
  compensationsSection(sections.compensations);
  stockSection(sections.stock);
  const refreshDemo = sections.demo ? demoSection(sections.demo) : null;
  // The queues refresh themselves: a new order waiting for review shows up without a reload.
  const timer = setInterval(() => {
    refreshReview();
    refreshFulfilment();
    if (refreshDemo) refreshDemo();
  }, REFRESH_MS);
  setCleanup(() => clearInterval(timer));
}

const jump = (id) => (event) => {
  event.preventDefault();
  const target = document.getElementById(id);
  target.setAttribute("tabindex", "-1");
  target.focus();
  target.scrollIntoView();
};

function ordersSection(box) {
  const statusBoxes = STATUSES.map((status) => h("input", { type: "checkbox", name: "status", value: status, id: `f-status-${status}` }));
  const reason = h("select", { name: "reason" }, h("option", { value: "" }, "any"), REASONS.map((r) => h("option", { value: r }, r)));
  const customer = h("input", { name: "customer_id", placeholder: "a user id", size: 36 });
  const after = h("input", { type: "datetime-local", name: "created_after" });
  const before = h("input", { type: "datetime-local", name: "created_before" });
  const limit = h("select", { name: "limit" }, [10, 20, 50, 100].map((n) => h("option", { value: n, selected: n === 20 }, n)));
  const results = h("div", { "aria-live": "polite" });
  const pager = h("div", { class: "pager" });
  const cursors = [null]; // the cursor of each page seen, to go back
  let pageIndex = 0;

  function query() {
    const params = new URLSearchParams();
    for (const box of statusBoxes) if (box.checked) params.append("status", box.value);
    if (reason.value) params.set("reason", reason.value);
    if (customer.value.trim()) params.set("customer_id", customer.value.trim());
    if (after.value) params.set("created_after", new Date(after.value).toISOString());
    if (before.value) params.set("created_before", new Date(before.value).toISOString());
    params.set("limit", limit.value);
    return params;
  }

  async function load() {
    const params = query();
    if (cursors[pageIndex]) params.set("cursor", cursors[pageIndex]);
    let page;
    try {
      page = await get(`orders?${params}`);
    } catch (error) {
      replace(results, h("p", { class: "error" }, `The orders could not be listed: ${errorText(error)}`));
      replace(pager);
      return;
    }
    cursors[pageIndex + 1] = page.next_cursor;
    replace(results, page.items.length ? ordersTable(page.items, `Orders, page ${pageIndex + 1}`) : h("p", {}, "No order matches."));
    replace(
      pager,
      h("button", { type: "button", disabled: pageIndex === 0, onclick: () => { pageIndex -= 1; load(); } }, "Previous page"),
      h("button", { type: "button", disabled: !page.next_cursor, onclick: () => { pageIndex += 1; load(); } }, "Next page"),
    );
  }

  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        cursors.length = 1;
        pageIndex = 0;
        load();
      },
    },
    h("fieldset", {}, h("legend", {}, "Status"), statusBoxes.map((b) => h("span", { class: "check" }, b, h("label", { for: b.id }, b.value)))),
    h("div", { class: "row" }, field("Reason", reason), field("Customer id", customer), field("Limit", limit)),
    h("div", { class: "row" }, field("Created after", after), field("Created before", before)),
    h("button", { type: "submit" }, "Filter"),
  );
  replace(box, h("h2", { id: "c-orders-h" }, "Orders"), form, results, pager);
  load();
}

function reviewSection(box) {
  const list = h("div", {});
  replace(box, h("h2", { id: "c-review-h" }, "Review queue"), h("p", { class: "hint" }, "Orders over the review threshold wait here, their payment authorised and stock held."), list);
  const decide = (order, approve) => async (event) => {
    event.target.disabled = true;
    try {
      await post(`orders/${order.id}/review`, { approve });
      announce(`Order ${order.id.slice(0, 8)} ${approve ? "approved" : "rejected"}.`);
      refresh();
    } catch (error) {
      announce(`Review refused: ${errorText(error)}`, "error");
      event.target.disabled = false;
    }
  };
  let shown = "";
  async function refresh() {
    let items;
    try {
      items = await allPages("orders?status=AWAITING_REVIEW&limit=100", 100);
    } catch (error) {
      replace(list, h("p", { class: "error" }, errorText(error)));
      shown = "";
      return;
    }
    const key = items.map((o) => o.id).join();
    if (key === shown) return; // unchanged: keep the focus where it is
    shown = key;
    replace(
      list,
      items.length
        ? ordersTable(items, "Waiting for review", (order) => [
            h("button", { type: "button", onclick: decide(order, true) }, `Approve ${order.id.slice(0, 8)}`),
            " ",
            h("button", { type: "button", class: "danger", onclick: decide(order, false) }, `Reject ${order.id.slice(0, 8)}`),
          ])
        : h("p", {}, "Nothing waits for review."),
    );
  }
  refresh();
  return refresh;
}

function fulfilmentSection(box) {
  const list = h("div", {});
  replace(box, h("h2", { id: "c-fulfil-h" }, "Fulfilment"), list);
  const mark = (order, status) => async (event) => {
    event.target.disabled = true;
    try {
      await put(`orders/${order.id}/status`, { status });
      announce(`Order ${order.id.slice(0, 8)} marked ${status}.`);
      refresh();
    } catch (error) {
      announce(`Refused: ${errorText(error)}`, "error");
      event.target.disabled = false;
    }
  };
  let shown = "";
  async function refresh() {
    let items;
    try {
      items = await allPages("orders?status=CONFIRMED&status=SHIPPED&limit=50", 50);
    } catch (error) {
      replace(list, h("p", { class: "error" }, errorText(error)));
      shown = "";
      return;
    }
    const key = items.map((o) => o.id + o.status).join();
    if (key === shown) return;
    shown = key;
    replace(
      list,
      items.length
        ? ordersTable(items, "Confirmed and shipped orders", (order) =>
            order.status === "CONFIRMED"
              ? h("button", { type: "button", onclick: mark(order, "SHIPPED") }, `Mark ${order.id.slice(0, 8)} shipped`)
              : h("button", { type: "button", onclick: mark(order, "DELIVERED") }, `Mark ${order.id.slice(0, 8)} delivered`),
          )
        : h("p", {}, "Nothing to ship."),
    );
  }
  refresh();
  return refresh;
}

function compensationsSection(box) {
  // The order row does not know a compensation failed (it is CANCELLED); the saga view does.
  const list = h("div", { "aria-live": "polite" });
  const check = h("button", { type: "button" }, "Check the latest 50 cancelled orders");
  async function scan() {
    check.disabled = true;
    replace(list, h("p", {}, "Checking…"));
    try {
      const page = await get("orders?status=CANCELLED&limit=50");
      const views = await Promise.all(page.items.map((o) => get(`orders/${o.id}/saga`).catch(() => null)));
      const failed = page.items.filter((_, i) => views[i]?.status === "compensation_failed");
      replace(
        list,
        failed.length
          ? ordersTable(failed, "Sagas with a failed compensation", (order) =>
              h(
                "button",
                {
                  type: "button",
                  onclick: async (event) => {
                    event.target.disabled = true;
                    try {
                      await post(`orders/${order.id}/compensations/retry`, {});
                      announce(`Retrying the failed compensations of ${order.id.slice(0, 8)}.`);
                    } catch (error) {
                      announce(`Retry refused: ${errorText(error)}`, "error");
                      event.target.disabled = false;
                    }
                  },
                },
                `Retry compensations of ${order.id.slice(0, 8)}`,
              ),
            )
          : h("p", {}, `No failed compensation among the latest ${page.items.length} cancelled orders.`),
      );
    } catch (error) {
      replace(list, h("p", { class: "error" }, errorText(error)));
    } finally {
      check.disabled = false;
    }
  }
  check.addEventListener("click", scan);
  replace(box, h("h2", { id: "c-comp-h" }, "Failed compensations"), h("p", { class: "hint" }, "A compensation that spent its budget keeps its saga open until it is retried."), check, list);
}

function stockSection(box) {
  const table = h("div", {});
  const product = h("select", { name: "product", required: true });
  const stock = h("input", { type: "number", min: 0, required: true, name: "stock" });
  async function load() {
    try {
      const products = await allPages("products?limit=100");
      const levels = await Promise.all(products.map((p) => get(`products/${p.id}/availability`)));
      replace(
        table,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            {},
            h("caption", {}, "Stock levels"),
            h("thead", {}, h("tr", {}, ["Product", "SKU", "On hand", "Reserved", "Available"].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, products.map((p, i) => h("tr", { dataset: { sku: p.sku } }, h("td", {}, p.name), h("td", {}, p.sku), h("td", {}, levels[i].on_hand), h("td", {}, levels[i].reserved), h("td", {}, levels[i].available)))),
          ),
        ),
      );
      const chosen = product.value;
      replace(product, products.map((p) => h("option", { value: p.id, selected: p.id === chosen }, `${p.name} (${p.sku})`)));
    } catch (error) {
      replace(table, h("p", { class: "error" }, errorText(error)));
    }
  }
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await put(`products/${product.value}/stock`, { stock: parseInt(stock.value, 10) });
          announce("Stock set.");
          await load();
        } catch (error) {
          announce(`Stock refused: ${errorText(error)}`, "error");
        }
      },
    },
    h("div", { class: "row" }, field("Product", product), field("On hand", stock)),
    h("button", { type: "submit" }, "Set stock"),
  );
  replace(box, h("h2", { id: "c-stock-h" }, "Stock"), table, h("h3", {}, "Set a product's stock"), form);
  load();
}

function demoSection(box) {
  const list = h("ul", { class: "processes", "aria-label": "Processes" });
  replace(
    box,
    h("h2", { id: "c-demo-h" }, "Demo controls"),
    h("p", { class: "hint" }, "Development only (ordersaga up): kill a process as a crash would, watch a saga pause and retry, then restart it."),
    list,
  );
  const act = (name, action) => async (event) => {
    event.target.disabled = true;
    announce(action === "kill" ? `Killing ${name}…` : `Restarting ${name}; it answers once healthy…`);
    try {
      await request("POST", `/demo/processes/${encodeURIComponent(name)}/${action}`);
      announce(action === "kill" ? `${name} killed.` : `${name} is back.`);
    } catch (error) {
      announce(`${name}: ${errorText(error)}`, "error");
    }
    refresh();
  };
  let shown = "";
  async function refresh() {
    let items;
    try {
      items = (await get("/demo/processes")).items;
    } catch (error) {
      replace(list, h("li", { class: "error" }, errorText(error)));
      shown = "";
      return;
    }
    const key = items.map((p) => p.name + p.state).join();
    if (key === shown) return;
    shown = key;
    replace(
      list,
      items.map((p) =>
        h(
          "li",
          { dataset: { process: p.name, state: p.state } },
          h("span", { class: "pname" }, p.name),
          h("span", { class: `badge p-${p.state}` }, p.state),
          h("button", { type: "button", class: "danger", disabled: p.state !== "running", onclick: act(p.name, "kill") }, `Kill ${p.name}`),
          h("button", { type: "button", disabled: p.state === "restarting", onclick: act(p.name, "restart") }, `Restart ${p.name}`),
        ),
      ),
    );
  }
  refresh();
  return refresh;
}
