// Lantern viewer: interaction on top of the server-rendered job and audit views (worker/render/page). Plain
// script, no dependency, no eval, no inline handler; every view works without it (all panels shown).
(function () {
  "use strict";

  function button(text, attrs) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    Object.keys(attrs || {}).forEach(function (k) { b.setAttribute(k, attrs[k]); });
    return b;
  }

  // [data-tabs]: one panel ([data-tab]) at a time, chosen in a tab bar (arrow keys move between tabs).
  function tabs(group) {
    var panels = Array.prototype.filter.call(group.children, function (c) { return c.hasAttribute("data-tab"); });
    if (panels.length < 2) return;
    var bar = document.createElement("div");
    bar.className = "tabbar";
    bar.setAttribute("role", "tablist");
    bar.setAttribute("aria-label", group.getAttribute("data-tabs"));
    var buttons = panels.map(function (panel, i) {
      var b = button(panel.getAttribute("data-tab"), {role: "tab"});
      panel.setAttribute("role", "tabpanel");
      b.addEventListener("click", function () { select(i); });
      b.addEventListener("keydown", function (e) {
        var step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (step) { e.preventDefault(); select((i + step + panels.length) % panels.length); buttons[(i + step + panels.length) % panels.length].focus(); }
      });
      bar.appendChild(b);
      return b;
    });
    function select(n) {
      panels.forEach(function (p, i) { p.hidden = i !== n; });
      buttons.forEach(function (b, i) {
        b.setAttribute("aria-selected", String(i === n));
        b.tabIndex = i === n ? 0 : -1;
      });
    }
    group.insertBefore(bar, group.firstChild);
    select(0);
  }

  // [data-units]: words or tokens, for every method of the section at once.
  function units(section) {
    var bar = document.createElement("div");
    bar.className = "tabbar";
    bar.setAttribute("aria-label", "unit");
    var choices = ["words", "tokens"].map(function (unit) {
      var b = button(unit, {"aria-pressed": "false", "data-choose": unit});
      b.addEventListener("click", function () { show(unit); });
      bar.appendChild(b);
      return b;
    });
    function show(unit) {
      section.querySelectorAll("[data-unit]").forEach(function (el) { el.hidden = el.getAttribute("data-unit") !== unit; });
      choices.forEach(function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-choose") === unit)); });
    }
    var first = section.firstElementChild;
    section.insertBefore(bar, first && /^H\d$/.test(first.tagName) ? first.nextSibling : first);
    section.querySelectorAll(".unit-note").forEach(function (n) { n.hidden = true; });
    show("words");
  }

  function cellValue(row, i, numeric) {
    var cell = row.cells[i];
    var text = cell ? (cell.getAttribute("data-v") || cell.textContent) : "";
    if (!numeric) return text.toLowerCase();
    var x = parseFloat(text);
    return isNaN(x) ? -Infinity : x;
  }

  // table[data-sortable]: a header button sorts by its column (numbers when the header says data-type="n").
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, i) {
      var b = button(th.textContent);
      th.textContent = "";
      th.appendChild(b);
      b.addEventListener("click", function () {
        var down = th.getAttribute("aria-sort") !== "descending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        var numeric = th.getAttribute("data-type") === "n";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, i, numeric), y = cellValue(b, i, numeric);
          return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
        if (table.lanternPage) table.lanternPage(0);
      });
    });
  }

  // table[data-paginate=N]: N rows a page, with previous/next.
  function paginate(table) {
    var size = parseInt(table.getAttribute("data-paginate"), 10) || 25;
    var body = table.tBodies[0];
    if (body.rows.length <= size) return;
    var pager = document.createElement("div");
    pager.className = "pager";
    var prev = button("previous"), next = button("next"), where = document.createElement("span");
    pager.appendChild(prev); pager.appendChild(where); pager.appendChild(next);
    table.parentNode.insertBefore(pager, table.nextSibling);
    var current = 0;
    function go(n) {
      var pages = Math.ceil(body.rows.length / size);
      current = Math.max(0, Math.min(n, pages - 1));
      Array.prototype.forEach.call(body.rows, function (r, i) {
        r.hidden = Math.floor(i / size) !== current;
      });
      where.textContent = "page " + (current + 1) + " of " + pages;
      prev.disabled = current === 0;
      next.disabled = current === pages - 1;
    }
    prev.addEventListener("click", function () { go(current - 1); });
    next.addEventListener("click", function () { go(current + 1); });
    table.lanternPage = go;
    go(0);
  }

  // Shaded texts: the raw value of a word on hover and focus. Runs with data-m/data-u keep their values in the
  // view's JSON (data-r picks the result); the value is copied to data-v, which the stylesheet shows.
  function number(x) {
    if (x === null || x === undefined) return "–";
    return Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? String(Number(x.toPrecision(3))) : x.toExponential(2);
  }

  function values(root) {
    var holder = root.querySelector("script.lantern-data");
    var data = holder ? JSON.parse(holder.textContent) : {results: []};
    function reveal(span) {
      var text = span.parentNode;
      if (span.hasAttribute("data-v") || !text.hasAttribute("data-m")) return;
      var result = data.results[Number(text.closest("[data-r]").getAttribute("data-r"))];
      var scores = result && result.methods[text.getAttribute("data-m")];
      var i = Array.prototype.indexOf.call(text.children, span);
      if (scores) span.setAttribute("data-v", number(scores[text.getAttribute("data-u")][i]));
    }
    function onWord(e) {
      var span = e.target;
      if (span.tagName === "SPAN" && span.parentNode.classList.contains("text")) reveal(span);
    }
    root.addEventListener("mouseover", onWord);
    root.addEventListener("focusin", onWord);
    // keyboard: each text is one tab stop; the arrow keys move from word to word
    root.querySelectorAll(".text").forEach(function (text) {
      Array.prototype.forEach.call(text.children, function (w, i) { w.tabIndex = i === 0 ? 0 : -1; });
      text.addEventListener("keydown", function (e) {
        var step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        var next = step > 0 ? e.target.nextElementSibling : step < 0 ? e.target.previousElementSibling : null;
        if (!next) return;
        e.preventDefault();
        e.target.tabIndex = -1;
        next.tabIndex = 0;
        next.focus();
      });
    });
  }

  function init(root) {
    if (root.getAttribute("data-ready") === "true") return;  // once per view
    values(root);
    root.querySelectorAll("[data-tabs]").forEach(tabs);
    root.querySelectorAll("[data-units]").forEach(units);
    root.querySelectorAll("table[data-sortable]").forEach(sortable);
    root.querySelectorAll("table[data-paginate]").forEach(paginate);
    root.setAttribute("data-ready", "true");
  }

  function start() { document.querySelectorAll("[data-lantern-view]").forEach(init); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  window.lanternViewer = {init: init};
}());
