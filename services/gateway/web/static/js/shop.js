// The shop: log in or sign up, the catalogue with live availability, cards on file, the basket and
// checkout with one Idempotency-Key per checkout (a double click, or a retry after a lost answer,
// places one order).

import { allPages, currentSession, get, logIn, money, post, signUp } from "./api.js";
import { announce, errorText, field, h, replace } from "./dom.js";

const AVAILABILITY_MS = 5000;
export const basket = new Map(); // product id → {product, quantity}
let checkoutKey = null; // the key of the checkout being attempted; a new basket gets a new one
let chosenCard = null;
let cardsOnFile = [];

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function basketChanged() {
  checkoutKey = null;
}

export async function renderShop({ view, setCleanup }) {
  const session = currentSession();
  if (!session) cardsOnFile = [];
  const catalogue = h("ul", { class: "products", "aria-label": "Products" });
  const basketBox = h("section", { class: "panel", "aria-labelledby": "basket-h" });
  const cardsBox = h("section", { class: "panel", "aria-labelledby": "cards-h" });
  replace(
    view,
    h("h1", {}, "Shop"),
    session ? null : accountForms(),
    h(
      "div",
      { class: "shop" },
      h("section", { class: "catalogue", "aria-labelledby": "catalogue-h" }, h("h2", { id: "catalogue-h" }, "Catalogue"), catalogue),
      h("div", { class: "side" }, basketBox, session ? cardsBox : null),
    ),
  );
  let products = [];
  let left = false; // a refresh still in flight when the visitor leaves must not speak on the next page
  const drawBasket = () => renderBasket(basketBox, products, session);
  async function refreshCatalogue() {
    try {
      products = await allPages("products?limit=100");
    } catch (error) {
      if (!left) announce(`The catalogue could not be loaded: ${errorText(error)}`, "error");
      return;
    }
    if (left) return;
    renderCatalogue(catalogue, products, drawBasket);
  }
  await refreshCatalogue();
  if (session) await renderCards(cardsBox, session, drawBasket);
  drawBasket();
  // Live availability: stock moves as others order; only the numbers are redrawn.
  const timer = setInterval(refreshCatalogue, AVAILABILITY_MS);
  setCleanup(() => {
    left = true;
    clearInterval(timer);
  });
}

function accountForms() {
  const loginUser = h("input", { name: "username", autocomplete: "username", required: true });
  const loginPassword = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const email = h("input", { name: "email", type: "email", autocomplete: "email", required: true });
  const username = h("input", { name: "new-username", autocomplete: "username", required: true, pattern: "[a-z0-9_.\\-]{3,}" });
  const password = h("input", { name: "new-password", type: "password", autocomplete: "new-password", required: true, minlength: 10 });
  const submit = (action) => async (event) => {
    event.preventDefault();
    const button = event.target.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      announce(errorText(error), "error");
    } finally {
      button.disabled = false;
    }
  };
  return h(
    "div",
    { class: "account" },
    h(
      "form",
      { class: "panel", "aria-labelledby": "login-h", onsubmit: submit(() => logIn(loginUser.value.trim(), loginPassword.value)) },
      h("h2", { id: "login-h" }, "Log in"),
      field("Email or username", loginUser),
      field("Password", loginPassword),
      h("button", { type: "submit" }, "Log in"),
    ),
    h(
      "form",
      {
        class: "panel",
        "aria-labelledby": "signup-h",
        onsubmit: submit(async () => {
          await signUp(email.value.trim(), username.value.trim(), password.value);
          announce("Welcome! Add a card to check out.");
        }),
      },
      h("h2", { id: "signup-h" }, "Sign up"),
      field("Email", email),
      field("Username (lower-case letters, digits, . _ -)", username),
      field("Password (10 characters or more)", password),
      h("button", { type: "submit" }, "Sign up"),
    ),
  );
}

function renderCatalogue(list, products, drawBasket) {
  const existing = new Map([...list.children].map((li) => [li.dataset.product, li]));
  for (const product of products) {
    const li = existing.get(product.id);
    if (li) {
      li.querySelector(".available").textContent = availabilityText(product);
      continue;
    }
    const quantity = h("input", { type: "number", min: 1, value: 1, inputmode: "numeric", class: "qty" });
    list.append(
      h(
        "li",
        { class: "product", dataset: { product: product.id, sku: product.sku } },
        h("h3", {}, product.name),
        h("p", { class: "desc" }, product.description),
        h("p", { class: "price" }, money(product.price_cents, product.currency)),
        h("p", { class: "available" }, availabilityText(product)),
        h(
          "div",
          { class: "add" },
          field(`Quantity of ${product.name}`, quantity),
          h(
            "button",
            {
              type: "button",
              onclick: () => {
                const count = Math.max(1, parseInt(quantity.value, 10) || 1);
                const line = basket.get(product.id) || { product, quantity: 0 };
                line.quantity += count;
                basket.set(product.id, line);
                basketChanged();
                drawBasket();
                announce(`${count} × ${product.name} added to the basket.`);
              },
            },
            `Add ${product.name} to basket`,
          ),
        ),
      ),
    );
  }
}

function availabilityText(product) {
  return product.available > 0 ? `${product.available} available` : "Out of stock";
}

async function renderCards(box, session, drawBasket) {
  const list = h("ul", { class: "cards", "aria-label": "Cards on file" });
  const number = h("input", { inputmode: "numeric", autocomplete: "cc-number", required: true, value: "" });
  const month = h("input", { type: "number", min: 1, max: 12, required: true, autocomplete: "cc-exp-month", value: "12" });
  const year = h("input", { type: "number", min: 2000, max: 2100, required: true, autocomplete: "cc-exp-year", value: String(new Date().getFullYear() + 3) });
  const cvc = h("input", { inputmode: "numeric", autocomplete: "cc-csc", required: true, pattern: "[0-9]{3,4}", value: "" });
  async function load() {
    const cards = await allPages(`users/${session.userId}/payment-methods?limit=100`);
    if (!chosenCard || !cards.some((c) => c.id === chosenCard)) chosenCard = cards[0]?.id || null;
    replace(
      list,
      cards.length ? null : h("li", {}, "No card yet."),
      cards.map((card) => h("li", { dataset: { card: card.id, last4: card.last4 } }, `${card.brand} •••• ${card.last4}, expires ${card.exp_month}/${card.exp_year}`)),
    );
    cardsOnFile = cards;
    drawBasket();
  }
  const form = h(
    "form",
    {
      "aria-labelledby": "addcard-h",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const card = await post("payment-methods", {
            card_number: number.value.replace(/\s+/g, ""),
            exp_month: parseInt(month.value, 10),
            exp_year: parseInt(year.value, 10),
            cvc: cvc.value.trim(),
          });
          chosenCard = card.id;
          number.value = "";
          cvc.value = "";
          announce(`Card •••• ${card.last4} added.`);
          await load();
        } catch (error) {
          announce(`The card was refused: ${errorText(error)}`, "error");
        }
      },
    },
    h("h3", { id: "addcard-h" }, "Add a card"),
    h("p", { class: "hint" }, "Test cards: 4242 4242 4242 4242 is approved, 4000 0000 0000 0002 is declined, 4000 0000 0000 0119 fails twice and then succeeds."),
    field("Card number", number),
    h("div", { class: "row" }, field("Expiry month", month), field("Expiry year", year), field("CVC", cvc)),
    h("button", { type: "submit" }, "Add card"),
  );
  replace(box, h("h2", { id: "cards-h" }, "Cards on file"), list, form);
  try {
    await load();
  } catch (error) {
    announce(`Your cards could not be loaded: ${errorText(error)}`, "error");
  }
}

function renderBasket(box, products, session) {
  const lines = [...basket.values()];
  const byId = new Map(products.map((p) => [p.id, p]));
  const total = lines.reduce((sum, line) => sum + line.quantity * line.product.price_cents, 0);
  const currency = lines[0]?.product.currency || "USD";
  const cards = session ? cardsOnFile : [];
  const checkout = h("button", { type: "button", class: "primary", disabled: !lines.length || !session || !cards.length }, "Place order");
  checkout.addEventListener("click", async () => {
    if (checkout.dataset.busy) return; // the second click of a double click
    checkout.dataset.busy = "1";
    checkout.disabled = true;
    checkoutKey = checkoutKey || newKey();
    try {
      const accepted = await post(
        "orders",
        { items: lines.map((line) => ({ product_id: line.product.id, quantity: line.quantity })), payment_method_id: chosenCard },
        { headers: { "Idempotency-Key": checkoutKey } },
      );
      basket.clear();
      checkoutKey = null;
      announce("Order placed: follow its saga below.");
      location.hash = `#/orders/${accepted.id}`;
    } catch (error) {
      // The key is kept: trying again is the same checkout, never a second order.
      announce(`The order was not placed: ${errorText(error)}`, "error");
      delete checkout.dataset.busy;
      checkout.disabled = false;
    }
  });
  replace(
    box,
    h("h2", { id: "basket-h" }, "Basket"),
    lines.length
      ? h(
          "ul",
          { class: "basket", "aria-label": "Basket" },
          lines.map((line) =>
            h(
              "li",
              { dataset: { product: line.product.id } },
              `${line.quantity} × ${line.product.name} — ${money(line.quantity * line.product.price_cents, line.product.currency)}`,
              byId.get(line.product.id)?.available < line.quantity ? h("span", { class: "warn" }, " (more than available)") : null,
              " ",
              h(
                "button",
                {
                  type: "button",
                  class: "link",
                  onclick: () => {
                    basket.delete(line.product.id);
                    basketChanged();
                    renderBasket(box, products, session);
                  },
                },
                `Remove ${line.product.name}`,
              ),
            ),
          ),
        )
      : h("p", {}, "The basket is empty."),
    lines.length ? h("p", { class: "total" }, `Total: ${money(total, currency)}`) : null,
    session && cards.length
      ? h(
          "fieldset",
          {},
          h("legend", {}, "Pay with"),
          cards.map((card) => {
            const radio = h("input", { type: "radio", name: "card", value: card.id, id: `card-${card.id}`, checked: card.id === chosenCard });
            radio.addEventListener("change", () => {
              chosenCard = card.id;
              basketChanged();
            });
            return h("div", { class: "radio" }, radio, h("label", { for: `card-${card.id}` }, `${card.brand} •••• ${card.last4}`));
          }),
        )
      : null,
    session ? (cards.length ? null : h("p", { class: "hint" }, "Add a card to check out.")) : h("p", { class: "hint" }, "Log in to check out."),
    checkout,
  );
}
