// skiplock dashboard: charts, confirmations and live updates over Server-Sent Events.
// Loaded as a file (the Content-Security-Policy allows no inline script); every value from the
// server is written with textContent or setAttribute, never as HTML.
(function () {
  "use strict";
  var body = document.body;
  var base = body.getAttribute("data-base") || "";
  var SVG = "http://www.w3.org/2000/svg";

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  function grouped(n) {
    return Number(n).toLocaleString("en-US");
  }

  function countText(count) {
    if (!count) return "0";
    if (count.kind === "at_least") return grouped(count.value) + "+";
    if (count.kind === "estimate") return "~" + grouped(count.value);
    return grouped(count.value);
  }

  function el(name, attrs) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    return node;
  }

  function clock(iso) {
    var d = new Date(iso);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  // Stacked bars of completed, failed and retried attempts per bucket.
  function draw(container, series) {
    if (!Array.isArray(series)) return;
    var width = Math.max(container.clientWidth, 200);
    var height = Math.max(container.clientHeight, 100);
    var pad = { left: 36, right: 4, top: 6, bottom: 18 };
    var inner = { w: width - pad.left - pad.right, h: height - pad.top - pad.bottom };
    var max = 1;
    series.forEach(function (b) { max = Math.max(max, b.completed + b.failed + b.retried); });
    var svg = el("svg", { viewBox: "0 0 " + width + " " + height, role: "img" });
    svg.appendChild(el("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + inner.h, y2: pad.top + inner.h, "class": "axis" }));
    var top = el("text", { x: pad.left - 4, y: pad.top + 8, "text-anchor": "end" });
    top.textContent = grouped(max);
    svg.appendChild(top);
    var zero = el("text", { x: pad.left - 4, y: pad.top + inner.h, "text-anchor": "end" });
    zero.textContent = "0";
    svg.appendChild(zero);
    var step = inner.w / Math.max(series.length, 1);
    var barWidth = Math.max(step - 1, 1);
    series.forEach(function (b, i) {
      var x = pad.left + i * step;
      var y = pad.top + inner.h;
      [["completed", b.completed], ["failed", b.failed], ["retried", b.retried]].forEach(function (part) {
        if (!part[1]) return;
        var h = part[1] / max * inner.h;
        y -= h;
        var rect = el("rect", { x: x, y: y, width: barWidth, height: Math.max(h, 0.5), "class": "bar-" + part[0] });
        var title = document.createElementNS(SVG, "title");
        title.textContent = clock(b.start) + ": " + grouped(part[1]) + " " + part[0];
        rect.appendChild(title);
        svg.appendChild(rect);
      });
    });
    [0, Math.floor(series.length / 2), series.length - 1].forEach(function (i, n) {
      if (!series[i]) return;
      var label = el("text", { x: pad.left + i * step + (n === 2 ? barWidth : 0), y: height - 4, "text-anchor": ["start", "middle", "end"][n] });
      label.textContent = clock(series[i].start);
      svg.appendChild(label);
    });
    container.replaceChildren(svg);
    container.setAttribute("data-drawn", String(series.length));
  }

  function legend(container) {
    var row = document.createElement("div");
    row.className = "legend";
    ["completed", "failed", "retried"].forEach(function (name) {
      var item = document.createElement("span");
      item.className = "l-" + name;
      item.textContent = name;
      row.appendChild(item);
    });
    container.after(row);
  }

  var charts = {};
  document.querySelectorAll("[data-chart]").forEach(function (container) {
    var series = null;
    try { series = JSON.parse(container.getAttribute("data-series") || "null"); } catch (e) { series = null; }
    charts[container.getAttribute("data-chart")] = { container: container, series: series };
    draw(container, series);
    legend(container);
  });
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (key) { draw(charts[key].container, charts[key].series); });
  });

  var live = body.getAttribute("data-live");
  var dot = document.querySelector(".live-dot");
  if (!live || !window.EventSource) return;

  function connect(url, name, handle) {
    var source = new EventSource(url);
    source.addEventListener(name, function (event) {
      if (dot) dot.classList.remove("stale");
      handle(JSON.parse(event.data), source);
    });
    source.onerror = function () { if (dot) dot.classList.add("stale"); };
    return source;
  }

  function updateOverview(view) {
    Object.keys(view.totals).forEach(function (key) {
      var node = document.querySelector('[data-total="' + key + '"]');
      if (node) node.textContent = grouped(view.totals[key]);
    });
    ["alive", "slots", "unresponsive"].forEach(function (key) {
      var node = document.querySelector('[data-workers="' + key + '"]');
      if (node) node.textContent = grouped(view.workers[key]);
    });
    var rows = document.querySelectorAll("tr[data-queue]");
    if (rows.length !== view.queues.length) {
      window.location.reload();
      return;
    }
    var byName = {};
    view.queues.forEach(function (q) { byName[q.name] = q; });
    rows.forEach(function (row) {
      var q = byName[row.getAttribute("data-queue")];
      if (!q) return;
      row.querySelectorAll("[data-count]").forEach(function (node) {
        var count = q[node.getAttribute("data-count")];
        var number = node.querySelector(".num") || node;
        number.textContent = countText(count);
        number.classList.toggle("zero", !count || count.value === 0);
        if (count && count.kind === "estimate") number.setAttribute("title", "an estimate from table statistics");
        else if (count && count.kind === "at_least") number.setAttribute("title", "counted up to here");
        else number.removeAttribute("title");
      });
      var minute = row.querySelector('[data-field="completed_last_minute"]');
      if (minute) minute.textContent = grouped(q.completed_last_minute);
      var failed = row.querySelector('[data-field="failed_last_hour"]');
      if (failed) failed.textContent = grouped(q.failed_last_hour);
      var lag = row.querySelector('[data-field="lag"]');
      if (lag) lag.textContent = q.oldest_available_age ? span(q.oldest_available_age.secs, q.oldest_available_age.nanos) : "—";
    });
    var sums = { completed: 0, failed: 0 };
    view.minutes.forEach(function (b) { sums.completed += b.completed; sums.failed += b.failed; });
    Object.keys(sums).forEach(function (key) {
      var node = document.querySelector('[data-sum="minutes-' + key + '"]');
      if (node) node.textContent = grouped(sums[key]);
    });
    if (charts.minutes) { charts.minutes.series = view.minutes; draw(charts.minutes.container, view.minutes); }
    if (charts.days && view.days) { charts.days.series = view.days; draw(charts.days.container, view.days); }
  }

  function span(secs, nanos) {
    if (secs === 0) return Math.round(nanos / 1e6) + " ms";
    if (secs < 60) return secs + " s";
    if (secs < 3600) return Math.floor(secs / 60) + " min";
    if (secs < 86400) return Math.floor(secs / 3600) + " h " + Math.floor(secs % 3600 / 60) + " min";
    return Math.floor(secs / 86400) + " d " + Math.floor(secs % 86400 / 3600) + " h";
  }

  function updateJob(job, source) {
    var state = document.getElementById("job-state");
    if (state && state.getAttribute("data-state") !== job.state) {
      state.setAttribute("data-state", job.state);
      var badge = document.createElement("span");
      badge.className = "state state-" + job.state;
      badge.textContent = job.state;
      state.replaceChildren(badge);
    }
    var bar = document.getElementById("job-progress");
    var card = document.querySelector(".progress-card");
    if (card && (job.state === "running" || (job.percent !== null && job.percent !== undefined))) {
      card.hidden = false;
    }
    if (bar && job.percent !== null && job.percent !== undefined) {
      bar.value = job.percent;
      bar.setAttribute("data-percent", job.percent.toFixed(1));
      var text = document.getElementById("job-progress-text");
      if (text) text.textContent = Math.round(job.percent) + "%";
    }
    var json = document.querySelector("#job-progress-json pre");
    if (json && job.progress !== null && job.progress !== undefined) {
      json.textContent = JSON.stringify(job.progress, null, 2);
    }
    if (job.finished) {
      // The result, attempts and actions of a finished job: render the page again, once.
      source.close();
      window.setTimeout(function () { window.location.reload(); }, 400);
    }
  }

  if (live === "overview") {
    connect(base + "/api/v1/events", "overview", updateOverview);
  } else if (/^[0-9]+$/.test(live)) {
    connect(base + "/api/v1/events?job=" + live, "job", updateJob);
  }
})();
