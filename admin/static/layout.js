/* Parcours admin layout: the phone menu and sortable tables. Our own file, served from
   /admin/static (nothing loads from another host; the CSP forbids inline scripts). */
(function () {
  "use strict";

  function phoneMenu() {
    var bar = document.querySelector(".topbar");
    var button = document.getElementById("menu-toggle");
    if (!bar || !button) { return; }
    bar.classList.add("has-menu");
    button.hidden = false;
    button.addEventListener("click", function () {
      var open = bar.classList.toggle("menu-open");
      button.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  function cellValue(row, index, type) {
    var cell = row.children[index];
    var raw = cell ? (cell.getAttribute("data-sort") || cell.textContent.trim()) : "";
    if (type === "number") {
      var n = parseFloat(raw);
      return isNaN(n) ? -Infinity : n;
    }
    return raw.toLowerCase();
  }

  function sortBy(table, header, index) {
    var button = header.querySelector("button");
    var type = button ? button.getAttribute("data-type") : "text";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.setAttribute("aria-sort", "none");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function sortableTables() {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
        var button = header.querySelector("button.sort");
        if (button) {
          button.addEventListener("click", function () { sortBy(table, header, index); });
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    phoneMenu();
    sortableTables();
  });
}());
