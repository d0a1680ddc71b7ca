// My orders, and one order's page: its status and reason, Cancel while allowed, a link to its saga
// in the Temporal Web UI, and the saga's timeline, live.

import { allPages, currentSession, get, money, post } from "./api.js";
import { announce, errorText, h, replace } from "./dom.js";
import { FINAL_SAGA, watchSaga } from "./saga.js";

const short = (id) => id.slice(0, 8);
const when = (stamp) => (stamp ? new Date(stamp).toLocaleString() : "");
const CANCELLABLE = new Set(["PENDING", "AWAITING_REVIEW"]);

function needLogin(view, what) {
  replace(view, h("h1", {}, what), h("p", {}, "Log in first: ", h("a", { href: "#/shop" }, "log in or sign up"), "."));
}

export async function renderOrders({ view }) {
  const session = currentSession();
  if (!session) return needLogin(view, "My orders");
  replace(view, h("h1", {}, "My orders"), h("p", {}, "Loading…"));
  let orders;
  try {
    orders = await allPages(`users/${session.userId}/orders?limit=100`, 200);
  } catch (error) {
    replace(view, h("h1", {}, "My orders"), h("p", { class: "error" }, errorText(error)));
    return;
  }
  replace(
    view,
    h("h1", {}, "My orders"),
    orders.length ? ordersTable(orders, "Your orders, newest first") : h("p", {}, "No order yet. ", h("a", { href: "#/shop" }, "Go shopping"), "."),
  );
}

export function ordersTable(orders, caption, extra = null) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "orders" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Order"), h("th", { scope: "col" }, "Placed"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Reason"), h("th", { scope: "col" }, "Total"), extra ? h("th", { scope: "col" }, "Actions") : null)),
      h(
        "tbody",
        {},
        orders.map((order) =>
          h(
            "tr",
            { dataset: { order: order.id, status: order.status } },
            h("td", {}, h("a", { href: `#/orders/${order.id}` }, short(order.id))),
            h("td", {}, when(order.created_at)),
            h("td", {}, h("span", { class: `badge s-${order.status.toLowerCase()}` }, order.status)),
            h("td", {}, order.cancel_reason || ""),
            h("td", {}, money(order.total_cents, order.currency)),
            extra ? h("td", {}, extra(order)) : null,
          ),
        ),
      ),
    ),
  );
}

export async function renderOrder({ view, config, setCleanup }, orderId) {
  if (!currentSession()) return needLogin(view, "Order");
  let order;
  try {
    order = await get(`orders/${orderId}`);
  } catch (error) {
    replace(view, h("h1", {}, "Order"), h("p", { class: "error" }, errorText(error)));
    return;
  }
  const status = h("span", { class: "badge", id: "order-status" });
  const reason = h("span", { id: "order-reason" });
  const total = h("span", {});
  const actions = h("div", { class: "actions" });
  const sagaState = h("p", { class: "saga-state", id: "saga-state", role: "status", "aria-live": "polite" });
  const connection = h("p", { class: "hint", id: "saga-connection" });
  const steps = h("ol", { class: "timeline", id: "timeline", "aria-label": "Saga steps" });
  // Step changes are told to screen readers one line at a time, not the whole list again.
  const changes = h("p", { class: "sr-only", "aria-live": "polite", id: "saga-changes" });
  const temporal = config.temporal_ui_url
    ? h(
        "a",
        {
          href: `${config.temporal_ui_url}/namespaces/${encodeURIComponent(config.temporal_namespace)}/workflows/${encodeURIComponent(`order-${orderId}`)}`,
          target: "_blank",
          rel: "noopener noreferrer",
          id: "temporal-link",
        },
        "This saga in the Temporal Web UI",
      )
    : null;
  replace(
    view,
    h("h1", {}, `Order ${short(orderId)}`),
    h(
      "dl",
      { class: "summary" },
      h("dt", {}, "Status"),
      h("dd", {}, status),
      h("dt", {}, "Reason"),
      h("dd", {}, reason),
      h("dt", {}, "Total"),
      h("dd", {}, total),
      h("dt", {}, "Placed"),
      h("dd", {}, when(order.created_at)),
      h("dt", {}, "Order id"),
      h("dd", { class: "mono" }, orderId),
    ),
    actions,
    h("section", { "aria-labelledby": "timeline-h", class: "panel" }, h("h2", { id: "timeline-h" }, "Saga timeline"), sagaState, connection, steps, changes, temporal ? h("p", {}, temporal) : null),
  );

  let lastView = null;
  const drawOrder = () => {
    status.textContent = order.status;
    status.className = `badge s-${order.status.toLowerCase()}`;
    reason.textContent = order.cancel_reason || "—";
    total.textContent = money(order.total_cents, order.currency);
    const pivotStarted = lastView?.steps.some((s) => s.name === "confirm_order" && s.status !== "pending");
    const allowed = CANCELLABLE.has(order.status) && !pivotStarted && (!lastView || lastView.status === "running");
    replace(
      actions,
      allowed
        ? h(
            "button",
            {
              type: "button",
              class: "danger",
              onclick: async (event) => {
                event.target.disabled = true;
                try {
                  await post(`orders/${orderId}/cancel`, {});
                  announce("Cancel requested: the saga compensates what it did.");
                } catch (error) {
                  announce(`Cancel refused: ${errorText(error)}`, "error");
                  event.target.disabled = false;
                }
              },
            },
            "Cancel order",
          )
        : null,
    );
  };
  drawOrder();

  const refreshOrder = async () => {
    try {
      order = await get(`orders/${orderId}`);
      drawOrder();
    } catch {
      // the saga view still shows the order's status
    }
  };

  const stop = watchSaga(
    orderId,
    (sagaView) => {
      const before = lastView;
      lastView = sagaView;
      // workflow_status: the workflow was closed from outside (terminated in Temporal, ...).
      const closed = sagaView.workflow_status ? ` when its workflow was closed (${sagaView.workflow_status})` : "";
      sagaState.textContent = `Saga ${sagaView.status}${closed}; order ${sagaView.order_status}${sagaView.cancel_reason ? ` (${sagaView.cancel_reason})` : ""}`;
      sagaState.dataset.status = sagaView.status;
      if (sagaView.workflow_status) sagaState.dataset.workflowStatus = sagaView.workflow_status;
      drawSteps(steps, sagaView);
      const changed = sagaView.steps.filter((s, i) => !before || JSON.stringify(before.steps[i]) !== JSON.stringify(s));
      if (changed.length) changes.textContent = changed.map((s) => `${s.name}: ${s.status}`).join("; ");
      // The order's own row (status, reason, total) follows the saga's changes.
      if (sagaView.order_status !== order.status || FINAL_SAGA.has(sagaView.status)) {
        order = { ...order, status: sagaView.order_status, cancel_reason: sagaView.cancel_reason };
        refreshOrder();
      }
      drawOrder();
    },
    (state, error) => {
      const texts = {
        stream: "Live: updates stream from the gateway.",
        polling: "Live: checking every second.",
        unavailable: `The saga cannot be read right now (${error ? errorText(error) : "unavailable"}); retrying.`,
        ended: "The saga has ended.",
      };
      connection.textContent = texts[state];
      connection.dataset.state = state;
      if (state === "ended") refreshOrder();
    },
  );
  setCleanup(stop);
}

function drawSteps(list, sagaView) {
  replace(
    list,
    sagaView.steps.map((step) =>
      h(
        "li",
        { class: `step st-${step.status}`, dataset: { step: step.name, status: step.status } },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h(
          "div",
          { class: "step-body" },
          h("h3", {}, step.name.replace(/_/g, " ")),
          h("p", {}, h("span", { class: "badge" }, step.status), step.attempts ? ` · ${step.attempts} attempt${step.attempts > 1 ? "s" : ""}` : "", step.finished_at ? ` · ${when(step.finished_at)}` : ""),
          step.error ? h("p", { class: "error" }, `Error: ${step.error}`) : null,
          step.compensation
            ? h(
                "p",
                { class: `comp c-${step.compensation.status}`, dataset: { compensation: step.compensation.status } },
                `Compensation: ${step.compensation.status}`,
                step.compensation.attempts ? ` · ${step.compensation.attempts} attempt${step.compensation.attempts > 1 ? "s" : ""}` : "",
                step.compensation.error ? ` · ${step.compensation.error}` : "",
              )
            : null,
        ),
      ),
    ),
  );
}
