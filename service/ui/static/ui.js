// The web UI's one script: live updates of the jobs list, a job's and an audit's progress, and the submit form's
// input shape. Every page works without it (server-rendered; a <noscript> refresh while a job runs). Text goes in
// through textContent only: nothing a user wrote ever becomes markup.
"use strict";
(function () {
  const POLL_MS = 1000;

  async function getJSON(url) {
    const resp = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
    if (resp.redirected || !resp.ok) throw new Error("HTTP " + resp.status);
    return resp.json();
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  // --- the jobs list: rebuilt from /ui/jobs.json while any job is queued or running
  function jobRow(r) {
    const tr = el("tr", null, {"data-id": r.id});
    const link = el("a", r.id.slice(0, 8), {href: r.url});
    const first = el("td"); first.appendChild(link); tr.appendChild(first);
    const status = el("td"); status.appendChild(el("span", r.status, {"class": "status status-" + r.status}));
    if (r.status === "running") status.appendChild(document.createTextNode(" " + Math.round(r.progress * 100) + "%"));
    tr.appendChild(status);
    tr.appendChild(el("td", r.model));
    tr.appendChild(el("td", r.methods.join(", ")));
    const created = el("td"); created.appendChild(el("time", r.created_at.slice(0, 19).replace("T", " "),
                                                     {datetime: r.created_at}));
    tr.appendChild(created);
    tr.appendChild(el("td", r.duration === null ? "" : r.duration.toFixed(2), {"class": "num"}));
    return tr;
  }

  function pollJobs(table) {
    const body = table.tBodies[0];
    async function tick() {
      try {
        const data = await getJSON(table.dataset.poll);
        if (data.items.length) body.replaceChildren(...data.items.map(jobRow));
        if (!data.items.some(r => r.status === "queued" || r.status === "running")) return;
      } catch (e) { /* signed out or offline: keep the page as it is, try again */ }
      setTimeout(tick, POLL_MS);
    }
    setTimeout(tick, POLL_MS);
  }

  // --- a job's or an audit's progress: numbers updated, the page reloaded once it has finished
  function pollProgress(section) {
    async function tick() {
      try {
        const s = await getJSON(section.dataset.statusUrl);
        const bar = section.querySelector("progress");
        if (bar) bar.value = s.progress;
        const pct = section.querySelector("[id$=-progress-text]");
        if (pct) pct.textContent = Math.round(s.progress * 100) + "%";
        const status = document.getElementById("job-status") || document.getElementById("audit-status");
        if (status) { status.textContent = s.status; status.className = "status status-" + s.status; }
        if (s.counts) {
          for (const k of ["done", "failed", "total"]) {
            const n = document.getElementById("audit-" + k); if (n) n.textContent = s.counts[k];
          }
          const rate = document.getElementById("audit-rate");
          if (rate) rate.textContent = s.items_per_second ? s.items_per_second.toFixed(2) : "–";
          const eta = document.getElementById("audit-eta");
          if (eta) eta.textContent = s.eta_seconds === null ? "–" : Math.round(s.eta_seconds) + " s";
        }
        if (s.finished) { window.location.reload(); return; }
      } catch (e) { /* try again */ }
      setTimeout(tick, POLL_MS);
    }
    setTimeout(tick, POLL_MS);
  }

  // --- the submit form: show the fields of the chosen input shape only
  function shapeSwitch(form) {
    const radios = form.querySelectorAll("input[name=shape]");
    function show() {
      const chosen = form.querySelector("input[name=shape]:checked").value;
      for (const box of form.querySelectorAll("[data-shape]")) {
        box.hidden = box.dataset.shape !== chosen;
        for (const field of box.querySelectorAll("textarea")) field.disabled = box.hidden;
      }
    }
    radios.forEach(r => r.addEventListener("change", show));
    show();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const table = document.querySelector("table[data-poll]");
    if (table && table.dataset.polling === "on") pollJobs(table);
    const progress = document.querySelector("[data-status-url]");
    if (progress) pollProgress(progress);
    const form = document.querySelector("form.submit");
    if (form) shapeSwitch(form);
  });
})();
