// Follows an order's saga view live: the gateway's Server-Sent Events stream, read with fetch()
// (EventSource cannot send the Authorization header); where the stream does not exist, or while it
// is broken, GET .../saga is polled instead, and the stream is tried again.

import { API, currentSession, get } from "./api.js";

export const FINAL_SAGA = new Set(["completed", "compensated"]);
const POLL_MS = 1000;

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// Calls onView(view) for every new view and onState(state, detail) with "stream", "polling",
// "unavailable" or "ended". Returns a function that stops watching.
export function watchSaga(orderId, onView, onState) {
  const controller = new AbortController();
  const { signal } = controller;
  let lastEventId = null;
  let streamMissing = false;
  let lastSeen = null;

  const deliver = (view) => {
    const text = JSON.stringify(view);
    if (text !== lastSeen) {
      lastSeen = text;
      onView(view);
    }
  };

  async function stream() {
    const headers = { Accept: "text/event-stream" };
    const session = currentSession();
    if (session) headers.Authorization = `Bearer ${session.token}`;
    if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
    let response;
    try {
      response = await fetch(`${API}/orders/${orderId}/saga/stream`, { headers, signal });
    } catch {
      return "broken";
    }
    if (response.status === 404 || response.status === 405) return "missing";
    if (!response.ok || !response.body) return "broken";
    onState("stream");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "broken"; // closed without its end event: reconnect
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseEvent(block);
          if (event.id !== null) lastEventId = event.id;
          if (event.data === null) continue; // a keep-alive comment
          deliver(JSON.parse(event.data));
          if (event.type === "end") return "end";
        }
      }
    } catch {
      return "broken";
    }
  }

  async function run() {
    while (!signal.aborted) {
      if (!streamMissing) {
        const outcome = await stream();
        if (signal.aborted) return;
        if (outcome === "end") return onState("ended");
        if (outcome === "missing") streamMissing = true;
      }
      try {
        const view = await get(`orders/${orderId}/saga`, { signal });
        deliver(view);
        if (FINAL_SAGA.has(view.status)) return onState("ended");
        onState("polling");
      } catch (error) {
        if (signal.aborted) return;
        onState("unavailable", error);
      }
      await sleep(POLL_MS, signal);
    }
  }

  run();
  return () => controller.abort();
}

function parseEvent(block) {
  const event = { id: null, type: "message", data: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "id") event.id = value;
    else if (name === "event") event.type = value;
    else if (name === "data") data.push(value);
  }
  if (data.length) event.data = data.join("\n");
  return event;
}
