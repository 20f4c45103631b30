/* Parcours admin behaviour: charts from <script type="application/json"> blocks,
   repeatable form rows, confirmations. No inline scripts (the CSP forbids them). */
(function () {
  "use strict";

  var PALETTE = ["#3451b2", "#d9480f", "#2b8a3e", "#ae3ec9", "#0c8599", "#e67700", "#5c7cfa"];
  var CONTROL_COLOR = "#868e96";

  function readJson(id) {
    var node = document.getElementById(id);
    if (!node) { return null; }
    try { return JSON.parse(node.textContent); } catch (e) { return null; }
  }

  function percent(value) {
    return (value * 100).toFixed(Math.abs(value) < 0.1 ? 1 : 0) + "%";
  }

  function withAlpha(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  function baseOptions(yTitle) {
    return {
      responsive: true, maintainAspectRatio: false, animation: false,
      interaction: {mode: "index", intersect: false},
      scales: {y: {ticks: {callback: percent, includeBounds: false},
                   title: {display: true, text: yTitle}}},
      plugins: {legend: {labels: {boxWidth: 12}}}
    };
  }

  function liftChart() {
    var canvas = document.getElementById("lift-chart");
    var data = readJson("lift-data");
    if (!canvas || !data || !window.Chart) { return; }
    var datasets = [];
    data.series.forEach(function (series, i) {
      var color = PALETTE[i % PALETTE.length];
      datasets.push.apply(datasets, bandDatasets(series.variant + " CI", series.upper,
        series.lower, color, 0.18));
      // A day with an unbounded interval is not drawn (see presenters.lift_chart).
      var drawn = series.effect.map(function (v, k) { return series.unbounded[k] ? null : v; });
      datasets.push({label: series.variant + " lift", data: drawn, borderColor: color,
        backgroundColor: color, borderWidth: 2.5, pointRadius: 2, tension: 0.2, spanGaps: true});
    });
    var options = baseOptions("relative lift vs control");
    options.plugins.legend.labels.filter = function (item, chart) {
      return !chart.datasets[item.datasetIndex].band;
    };
    options.plugins.tooltip = {filter: function (item) { return !item.dataset.band; },
      callbacks: {label: function (ctx) {
        var s = data.series[Math.floor(ctx.datasetIndex / 3)];
        var lo = s.lower[ctx.dataIndex], hi = s.upper[ctx.dataIndex];
        var ci = (lo === null || hi === null) ? "" : " [" + percent(lo) + ", " + percent(hi) + "]";
        return ctx.dataset.label + ": " + percent(ctx.parsed.y) + ci;
      }}};
    var range = yRange(data.series, 0.1, 0.05);
    options.scales.y.min = range[0];
    options.scales.y.max = range[1];
    options.scales.y.grid = {color: function (ctx) {
      return ctx.tick && ctx.tick.value === 0 ? "#1c2430" : "rgba(0,0,0,0.08)";
    }};
    new window.Chart(canvas, {type: "line", data: {labels: data.labels, datasets: datasets},
      options: options});
  }

  /* Early days have huge intervals: keep the axis around the effects and the latest
     interval (the one the report tests), and clip the earlier bands; [min, max], or null
     when there is nothing to show. `lines`: {effect, lower, upper} arrays per variant. */
  function yRange(lines, minSpan, step) {
    var effects = [], bounds = [], latest = [];
    lines.forEach(function (s) {
      var shown = s.unbounded ? s.effect.filter(function (v, k) { return !s.unbounded[k]; })
        : s.effect;
      effects = effects.concat(shown.filter(isNum));
      bounds = bounds.concat(s.lower.filter(isNum), s.upper.filter(isNum));
      latest = latest.concat(lastNum(s.lower), lastNum(s.upper));
    });
    var span = Math.max(minSpan, 3 * largest(effects), 1.1 * largest(latest));
    if (!(span > 0)) { return null; }
    var low = Math.max(-span, Math.min.apply(null, bounds.concat([-minSpan / 2])));
    var high = Math.min(span, Math.max.apply(null, bounds.concat([minSpan / 2])));
    return step ? [Math.floor(low / step) * step, Math.ceil(high / step) * step] : [low, high];
  }

  function largest(values) { return Math.max.apply(null, values.map(Math.abs).concat([0])); }

  function lastNum(values) {
    var numbers = values.filter(isNum);
    return numbers.length ? [numbers[numbers.length - 1]] : [];
  }

  /* The upper and lower datasets of a confidence band, filled between them. One day has no
     area to fill: its bounds are then drawn as dashes above and below the point. */
  function bandDatasets(label, upper, lower, color, alpha) {
    var common = {borderWidth: 0, pointRadius: upper.length === 1 ? 8 : 0, pointStyle: "dash",
      pointBorderColor: color, pointBorderWidth: 2, borderColor: "transparent",
      spanGaps: true, band: true};
    return [Object.assign({label: label + " upper", data: upper, fill: false}, common),
            Object.assign({label: label + " lower", data: lower, fill: "-1",
                           backgroundColor: withAlpha(color, alpha)}, common)];
  }

  function isNum(value) { return typeof value === "number" && isFinite(value); }

  /* Chart options for shares: a y axis from 0 to 1, tooltips in percent. */
  function shareOptions(title) {
    var options = baseOptions(title);
    options.scales.y.beginAtZero = true;
    options.scales.y.max = 1;
    options.plugins.tooltip = {callbacks: {label: function (ctx) {
      return ctx.dataset.label + ": " + percent(ctx.parsed.y);
    }}};
    return options;
  }

  function funnelChart() {
    var canvas = document.getElementById("funnel-chart");
    var data = readJson("funnel-data");
    if (!canvas || !data || !window.Chart) { return; }
    var datasets = data.series.map(function (series, i) {
      var color = i === 0 ? CONTROL_COLOR : PALETTE[(i - 1) % PALETTE.length];
      return {label: series.variant, data: series.rates, backgroundColor: color, borderRadius: 3};
    });
    var options = shareOptions("share of units reaching the step");
    new window.Chart(canvas, {type: "bar", data: {labels: data.labels, datasets: datasets},
      options: options});
  }

  /* A bandit's share of new traffic per arm, one step per weight period. */
  function weightsChart() {
    var canvas = document.getElementById("weights-chart");
    var data = readJson("weights-data");
    if (!canvas || !data || !window.Chart) { return; }
    var datasets = data.series.map(function (series, i) {
      var color = i === 0 ? CONTROL_COLOR : PALETTE[(i - 1) % PALETTE.length];
      return {label: series.variant, data: series.weights, borderColor: color,
              backgroundColor: color, stepped: true, pointRadius: 3};
    });
    var options = shareOptions("share of new traffic");
    new window.Chart(canvas, {type: "line", data: {labels: data.labels, datasets: datasets},
      options: options});
  }

  /* Every metric's absolute change per exposure day, cumulative or daily (a toggle redraws
     all charts from the same JSON block). Values arrive already in the metric's unit. */
  function seriesCharts() {
    var data = readJson("series-data");
    if (!data || !window.Chart) { return; }
    var charts = [];
    function datasetsOf(entry, view) {
      var out = [];
      entry.series.forEach(function (series, i) {
        var color = PALETTE[i % PALETTE.length], line = series[view];
        out.push.apply(out, bandDatasets(series.variant, line.upper, line.lower, color, 0.16));
        out.push({label: series.variant, data: line.effect, borderColor: color, backgroundColor: color,
          borderWidth: 2, pointRadius: 2, tension: 0.2, spanGaps: view === "cumulative"});
      });
      return out;
    }
    function fmt(entry, value) {
      if (!isNum(value)) { return "–"; }
      var digits = entry.unit === "pts" ? 2 : (entry.unit === "points" ? 1 : 3);
      return (value > 0 ? "+" : "") + value.toFixed(digits) + (entry.unit ? " " + entry.unit : "");
    }
    data.forEach(function (entry, index) {
      var canvas = document.getElementById("series-chart-" + index);
      if (!canvas) { return; }
      var options = {responsive: true, maintainAspectRatio: false, animation: false,
        interaction: {mode: "index", intersect: false},
        scales: {y: {title: {display: true, text: "change vs control" + (entry.unit ? " (" + entry.unit + ")" : "")},
                     grid: {color: function (ctx) { return ctx.tick && ctx.tick.value === 0 ? "#1c2430" : "rgba(0,0,0,0.08)"; }}}},
        plugins: {legend: {labels: {boxWidth: 12, filter: function (item, chart) {
                    return !chart.datasets[item.datasetIndex].band; }}},
                  tooltip: {filter: function (item) { return !item.dataset.band; },
                    callbacks: {label: function (ctx) {
                      var s = entry.series[Math.floor(ctx.datasetIndex / 3)][currentView()];
                      return ctx.dataset.label + ": " + fmt(entry, ctx.parsed.y) + " [" +
                        fmt(entry, s.lower[ctx.dataIndex]) + ", " + fmt(entry, s.upper[ctx.dataIndex]) + "]";
                    }}}}};
      fitAxis(options, entry, "cumulative");
      charts.push({entry: entry, chart: new window.Chart(canvas, {type: "line",
        data: {labels: entry.labels, datasets: datasetsOf(entry, "cumulative")}, options: options})});
    });
    function fitAxis(options, entry, view) {
      var range = yRange(entry.series.map(function (series) { return series[view]; }), 0);
      options.scales.y.min = range ? range[0] : undefined;
      options.scales.y.max = range ? range[1] : undefined;
      options.scales.y.ticks = {includeBounds: false};
    }
    function currentView() {
      var checked = document.querySelector("input[name='series-view']:checked");
      return checked ? checked.value : "cumulative";
    }
    document.querySelectorAll("input[name='series-view']").forEach(function (input) {
      input.addEventListener("change", function () {
        var view = currentView();
        document.getElementById("metric-series").setAttribute("data-view", view);
        charts.forEach(function (item) {
          item.chart.data.datasets = datasetsOf(item.entry, view);
          fitAxis(item.chart.options, item.entry, view);
          item.chart.update();
        });
      });
    });
  }

  /* Concluding asks first; shipping a winner lists what makes it risky (its breached
     guardrails, SRM: the server's own list) and, once confirmed, sends acknowledge_risks —
     the server refuses an unacknowledged risky ship anyway. */
  function concludeConfirmation() {
    var form = document.getElementById("conclude-form");
    if (!form) { return; }
    form.addEventListener("submit", function (event) {
      var outcome = form.elements.outcome, winner = form.elements.winner;
      var label = outcome.options[outcome.selectedIndex].text;
      var shipping = outcome.value === "ship" && winner.value;
      var risks = shipping ? (JSON.parse(form.getAttribute("data-ship-risks") || "{}")[winner.value] || []) : [];
      var message = "Conclude " + form.getAttribute("data-confirm-conclude") + " as \"" + label + "\"" +
        (shipping ? " with " + winner.value : "") +
        "? Concluding ends the experiment and cannot be undone.";
      if (risks.length) {
        message = "Risky ship. " + message + "\n\nRisks:\n- " + risks.join("\n- ");
      }
      form.elements.acknowledge_risks.value = "";
      if (!window.confirm(message)) { event.preventDefault(); event.stopImmediatePropagation(); return; }
      if (risks.length) { form.elements.acknowledge_risks.value = "1"; }
    });
  }

  /* Repeatable rows: add from <template id="tpl-NAME">, move up/down, remove. Fields are
     posted as same-named lists in document order, so nothing needs renumbering. */
  function rowBehaviour() {
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) { return; }
      var add = button.getAttribute("data-add");
      if (add) {
        var template = document.getElementById("tpl-" + add);
        var list = document.querySelector("[data-rows='" + add + "']");
        if (template && list) {
          list.appendChild(template.content.cloneNode(true));
          var input = list.lastElementChild && list.lastElementChild.querySelector("input, select");
          if (input) { input.focus(); }
        }
        return;
      }
      var action = button.getAttribute("data-action");
      var row = button.closest(".row");
      if (!action || !row) { return; }
      if (action === "remove") { row.remove(); }
      if (action === "up" && row.previousElementSibling) { row.parentNode.insertBefore(row, row.previousElementSibling); button.focus(); }
      if (action === "down" && row.nextElementSibling) { row.parentNode.insertBefore(row.nextElementSibling, row); button.focus(); }
      syncSteps();
    });
    document.addEventListener("input", function (event) {
      if (event.target.name === "journey") { syncSteps(); }
    });
  }

  /* Keep the metric "step" suggestions equal to the journey steps being edited. */
  function syncSteps() {
    var list = document.getElementById("journey-steps");
    if (!list) { return; }
    list.innerHTML = "";
    document.querySelectorAll("input[name='journey']").forEach(function (input) {
      if (input.value.trim()) {
        var option = document.createElement("option");
        option.value = input.value.trim();
        list.appendChild(option);
      }
    });
  }

  function confirmations() {
    document.addEventListener("submit", function (event) {
      var message = event.target.getAttribute("data-confirm");
      if (message && !window.confirm(message)) { event.preventDefault(); }
    });
    document.querySelectorAll("[data-select-on-focus]").forEach(function (input) {
      input.addEventListener("focus", function () { input.select(); });
    });
    var summary = document.getElementById("error-summary");
    if (summary) { summary.focus(); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    liftChart();
    funnelChart();
    weightsChart();
    seriesCharts();
    concludeConfirmation();
    rowBehaviour();
    confirmations();
  });
})();
