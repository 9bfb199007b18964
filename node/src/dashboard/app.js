// The dashboard's only script: applies the node's live events (the page-relative `events`) to the page.
// It writes text, never markup.
"use strict";
// A file chosen in an input with data-into is read (as text) into the text area of
// that name: a manifest uploaded without a multipart form.
document.addEventListener("change", function (event) {
  const input = event.target;
  if (!(input instanceof HTMLInputElement) || input.type !== "file" || !input.dataset.into) return;
  const file = input.files && input.files[0];
  const area = document.querySelector("textarea[name='" + input.dataset.into + "']");
  if (!file || !area) return;
  file.text().then(function (text) {
    area.value = text;
  });
});
(function () {
  if (!window.EventSource) {
    return;
  }
  const extra = document.body.dataset.with;
  const source = new EventSource(extra ? "events?with=" + encodeURIComponent(extra) : "events");
  const status = document.getElementById("live");
  source.addEventListener("open", function () {
    if (status) status.textContent = "Live";
  });
  source.addEventListener("error", function () {
    if (status) status.textContent = "Reconnecting…";
  });
  source.addEventListener("devices", function (event) {
    for (const device of JSON.parse(event.data)) {
      for (const row of document.querySelectorAll("tr[data-peer]")) {
        if (row.dataset.peer !== device.peer) continue;
        const online = row.querySelector("td[data-field='online']");
        if (online && online.dataset.self !== "true") {
          online.textContent = device.online ? "online" : "offline";
          online.className = device.online ? "ok" : "muted";
        }
        if (device.revoked) {
          const state = row.querySelector("td[data-field='state']");
          if (state) state.textContent = "revoked";
          const action = row.querySelector("a.danger");
          if (action) action.remove();
        }
      }
    }
  });
  source.addEventListener("sync", function (event) {
    for (const store of JSON.parse(event.data)) {
      for (const row of document.querySelectorAll("tr[data-store]")) {
        if (row.dataset.store !== store.name) continue;
        const cell = row.querySelector("td[data-field='sync']");
        if (cell) cell.textContent = store.text;
      }
    }
  });
  source.addEventListener("drivers", function (event) {
    for (const driver of JSON.parse(event.data)) {
      for (const row of document.querySelectorAll("tr[data-driver]")) {
        if (row.dataset.driver !== driver.name) continue;
        const state = row.querySelector("td[data-field='state']");
        if (state) {
          state.textContent = driver.state;
          state.className = driver.class;
        }
        const records = row.querySelector("td[data-field='records']");
        if (records) records.textContent = String(driver.records);
        const error = row.querySelector("td[data-field='error']");
        if (error) error.textContent = driver.last_error;
        const progress = row.querySelector("td[data-field='progress']");
        if (progress) {
          const meter = progress.querySelector("progress");
          if (meter && driver.progress) {
            meter.max = driver.progress[1];
            meter.value = Math.min(driver.progress[0], driver.progress[1]);
          }
          const text = progress.querySelector("span");
          if (text) text.textContent = driver.progress_text;
        }
      }
    }
  });
  source.addEventListener("audit", function (event) {
    const table = document.querySelector("table[data-live='audit']");
    if (!table) return;
    const entry = JSON.parse(event.data);
    const action = table.dataset.action || "";
    const outcome = table.dataset.outcome || "";
    if (action && !(action.endsWith(".") ? entry.action.startsWith(action) : entry.action === action)) return;
    if (outcome && entry.class !== outcome) return;
    const row = document.createElement("tr");
    row.dataset.seq = String(entry.seq);
    for (const value of [String(entry.seq), entry.time, entry.device, entry.actor, entry.action, entry.object, entry.outcome, String(entry.bytes)]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.appendChild(cell);
    }
    const body = table.querySelector("tbody");
    body.insertBefore(row, body.firstChild);
  });
})();
