// skiplock: live progress bars for the application's own pages. Every element with
// data-skiplock-job and data-skiplock-events="<JobEvents route>/jobs/<id>" gets its
// <progress> and [data-skiplock-label] updated from the job's event stream. Values are
// written with textContent and properties, never as HTML.
(function () {
  "use strict";
  function watch(root) {
    var url = root.getAttribute("data-skiplock-events");
    if (!url || !window.EventSource) return;
    var bar = root.querySelector("progress");
    var label = root.querySelector("[data-skiplock-label]");
    var source = new EventSource(url);
    source.addEventListener("job", function (event) {
      var job = JSON.parse(event.data);
      root.setAttribute("data-state", job.state);
      if (job.percent !== null && job.percent !== undefined) {
        if (bar) bar.value = job.percent;
        if (label) label.textContent = Math.round(job.percent) + "%";
        root.setAttribute("data-percent", job.percent.toFixed(1));
      }
      root.dispatchEvent(new CustomEvent("skiplock:job", { detail: job, bubbles: true }));
      if (job.finished) {
        source.close();
        root.dispatchEvent(new CustomEvent("skiplock:finished", { detail: job, bubbles: true }));
        if (root.hasAttribute("data-skiplock-reload")) {
          window.setTimeout(function () { window.location.reload(); }, 300);
        }
      }
    });
  }
  document.querySelectorAll("[data-skiplock-job]").forEach(watch);
})();
