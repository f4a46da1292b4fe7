// Quantum Trader trace viewer: collapse/expand, find in trace, deep links to spans and the
// span links drawn between rows. Plain JavaScript, no dependencies, no build step.
(function () {
  "use strict";

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll(".wf .row[data-span]"));
  }

  function descendants(row) {
    // Rows are in depth-first order: the subtree is every following row deeper than this one.
    var depth = +row.dataset.depth, out = [], next = row.nextElementSibling;
    while (next && next.classList.contains("row") && +next.dataset.depth > depth) {
      out.push(next);
      next = next.nextElementSibling;
    }
    return out;
  }

  function setCollapsed(row, collapsed) {
    row.dataset.collapsed = collapsed ? "1" : "";
    var toggle = row.querySelector(".toggle");
    if (toggle) toggle.textContent = collapsed ? "▸" : "▾";
    descendants(row).forEach(function (d) {
      d.classList.toggle("hidden", collapsed);
      if (!collapsed && d.dataset.collapsed) {
        // A collapsed child keeps its own subtree hidden.
        descendants(d).forEach(function (x) { x.classList.add("hidden"); });
      }
    });
    drawLinks();
  }

  function reveal(row) {
    // Expand every collapsed ancestor so the row is visible.
    var depth = +row.dataset.depth, prev = row.previousElementSibling;
    while (prev && depth > 0) {
      if (prev.classList.contains("row") && +prev.dataset.depth < depth) {
        if (prev.dataset.collapsed) setCollapsed(prev, false);
        depth = +prev.dataset.depth;
      }
      prev = prev.previousElementSibling;
    }
  }

  function find(text) {
    var count = 0, all = rows();
    text = text.trim().toLowerCase();
    all.forEach(function (row) {
      var hit = text !== "" && row.dataset.text.indexOf(text) >= 0;
      row.classList.toggle("found", hit);
      if (hit) { count++; reveal(row); }
    });
    var out = document.getElementById("find-count");
    if (out) out.textContent = text === "" ? "" : count + " of " + all.length + " spans match";
    return count;
  }

  function goToHash() {
    var m = /^#span-([0-9a-fA-F]+)$/.exec(location.hash);
    if (!m) return;
    var row = document.getElementById("span-" + m[1]);
    if (!row) return;
    document.querySelectorAll(".wf .row.target").forEach(function (r) { r.classList.remove("target"); });
    reveal(row);
    row.classList.add("target");
    var details = row.querySelector("details");
    if (details) details.open = true;
    row.scrollIntoView({block: "center"});
  }

  function drawLinks() {
    // A curve from each span to the span it links to, when both are on this page.
    var wf = document.querySelector(".wf");
    if (!wf) return;
    var old = wf.querySelector("svg.links");
    if (old) old.remove();
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "links");
    svg.setAttribute("width", wf.clientWidth);
    svg.setAttribute("height", wf.clientHeight);
    var box = wf.getBoundingClientRect(), drawn = 0;
    wf.querySelectorAll(".row[data-links]").forEach(function (row) {
      if (row.classList.contains("hidden")) return;
      row.dataset.links.split(" ").forEach(function (target) {
        var to = document.getElementById("span-" + target);
        if (!to || to.classList.contains("hidden")) return;
        var a = row.querySelector(".bar").getBoundingClientRect();
        var b = to.querySelector(".bar").getBoundingClientRect();
        var x1 = a.left - box.left, y1 = a.top - box.top + 6;
        var x2 = b.right - box.left, y2 = b.top - box.top + 6;
        var path = document.createElementNS(ns, "path");
        var mid = Math.min(x1, x2) - 30;
        path.setAttribute("d", "M" + x1 + "," + y1 + " C" + mid + "," + y1 + " " + mid + "," + y2 + " " + x2 + "," + y2);
        path.setAttribute("stroke", "#59a14f");
        path.setAttribute("stroke-width", "1.5");
        path.setAttribute("fill", "none");
        path.setAttribute("marker-end", "url(#arrow)");
        svg.appendChild(path);
        drawn++;
      });
    });
    var defs = document.createElementNS(ns, "defs");
    defs.innerHTML = '<marker id="arrow" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#59a14f"/></marker>';
    svg.appendChild(defs);
    wf.style.position = "relative";
    wf.appendChild(svg);
    wf.dataset.linksDrawn = drawn;
  }

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (t.classList && t.classList.contains("toggle")) {
      var row = t.closest(".row");
      setCollapsed(row, !row.dataset.collapsed);
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var input = document.getElementById("find");
    if (input) {
      input.addEventListener("input", function () { find(input.value); });
      if (input.value) find(input.value);
    }
    var expand = document.getElementById("expand-all");
    if (expand) expand.addEventListener("click", function () {
      rows().forEach(function (r) { if (r.dataset.collapsed) setCollapsed(r, false); });
    });
    var collapse = document.getElementById("collapse-all");
    if (collapse) collapse.addEventListener("click", function () {
      rows().forEach(function (r) { if (+r.dataset.depth === 0 && r.querySelector(".toggle")) setCollapsed(r, true); });
    });
    drawLinks();
    goToHash();
  });
  window.addEventListener("hashchange", goToHash);
  window.addEventListener("resize", drawLinks);
  window.qtViewer = {find: find, setCollapsed: setCollapsed, drawLinks: drawLinks};
})();
