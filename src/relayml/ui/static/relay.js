// relay ui: hover highlights a node's edges; the filter box hides table rows or dims nodes.
(function () {
  "use strict";
  var svg = document.getElementById("lineage");
  if (svg) {
    svg.querySelectorAll(".node").forEach(function (node) {
      var id = node.getAttribute("data-id");
      var edges = svg.querySelectorAll('.edge[data-src="' + CSS.escape(id) + '"], .edge[data-dst="' + CSS.escape(id) + '"]');
      node.addEventListener("mouseenter", function () {
        node.classList.add("hot");
        edges.forEach(function (e) { e.classList.add("hot"); });
      });
      node.addEventListener("mouseleave", function () {
        node.classList.remove("hot");
        edges.forEach(function (e) { e.classList.remove("hot"); });
      });
    });
  }
  var filter = document.getElementById("filter");
  if (!filter) { return; }
  filter.addEventListener("input", function () {
    var text = filter.value.trim().toLowerCase();
    document.querySelectorAll("table.filterable tbody tr").forEach(function (row) {
      row.classList.toggle("hidden", text !== "" && row.textContent.toLowerCase().indexOf(text) < 0);
    });
    if (svg) {
      svg.querySelectorAll(".node").forEach(function (node) {
        var title = (node.getAttribute("data-title") || "").toLowerCase();
        node.classList.toggle("dim", text !== "" && title.indexOf(text) < 0);
      });
    }
  });
})();
