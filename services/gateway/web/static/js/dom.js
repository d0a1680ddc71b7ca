// Building the DOM from data without innerHTML: every value is text, never markup.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      element.className = value;
    } else if (key === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(key, "");
    } else {
      element.setAttribute(key, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

let uniq = 0;
export function uid(prefix) {
  uniq += 1;
  return `${prefix}-${uniq}`;
}

// A labelled form field; `input` attributes go to the control.
export function field(label, input) {
  const id = input.id || uid("f");
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

// Says something to every user: visibly, and to screen readers through the live region.
export function announce(message, kind = "info") {
  const region = document.getElementById("notice");
  region.className = `notice ${kind}`;
  region.textContent = message;
}

// An error belongs to the page that met it: leaving the page takes it away, while a confirmation
// ("order placed") stays to greet the next page.
export function dropPageError() {
  const region = document.getElementById("notice");
  if (region && region.classList.contains("error")) {
    region.className = "notice";
    region.textContent = "";
  }
}

export function errorText(error) {
  if (error && error.code) return `${error.message} (${error.code})`;
  return String(error?.message || error);
}
