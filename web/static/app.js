// steplog ui: the live parts. The pages read fine without this file; with it, a running job's
// steps, totals and the jobs list follow the log through Server-Sent Events.
"use strict";
(function () {
  function byData(attr, value, within) {
    var found = [];
    (within || document).querySelectorAll("[" + attr + "]").forEach(function (el) {
      if (el.getAttribute(attr) === value) found.push(el);
    });
    return found;
  }

  function applyJob(update) {
    Object.keys(update.steps || {}).forEach(function (name) {
      var s = update.steps[name];
      byData("data-step", name, document.getElementById("dag")).forEach(function (el) {
        el.setAttribute("data-status", s.status);
        var label = el.querySelector(".step-status");
        if (label) label.textContent = s.status;
      });
    });
    var totals = update.totals || {};
    Object.keys(totals).forEach(function (key) {
      byData("data-total", key).forEach(function (el) {
        el.textContent = String(totals[key]);
        if (el.hasAttribute("data-status")) el.setAttribute("data-status", String(totals[key]));
      });
    });
    if (update.events && update.events.length) {
      var box = document.getElementById("new-events");
      if (box) {
        var span = box.querySelector("span");
        span.textContent = String(Number(span.textContent || 0) + update.events.length);
        box.hidden = false;
      }
    }
  }

  function applyJobs(update) {
    var missing = false;
    (update.jobs || []).forEach(function (job) {
      var rows = byData("data-job-id", job.job_id);
      if (!rows.length) { missing = true; return; }
      rows.forEach(function (row) {
        row.querySelectorAll("[data-col]").forEach(function (cell) {
          var col = cell.getAttribute("data-col");
          var value = col === "steps" ? job.steps_done + "/" + job.steps : job[col];
          if (col === "started") value = job.started || job.created;
          cell.textContent = value === null || value === undefined ? "" : String(value);
          if (col === "status") cell.setAttribute("data-status", job.status);
        });
      });
    });
    if (missing) {
      var box = document.getElementById("new-jobs");
      if (box) box.hidden = false;
    }
  }

  function listen(url, event, apply) {
    if (!url || !window.EventSource) return;
    var source = new EventSource(url);
    source.addEventListener(event, function (message) { apply(JSON.parse(message.data)); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var body = document.body;
    listen(body.getAttribute("data-job-stream"), "state", applyJob);
    listen(body.getAttribute("data-jobs-stream"), "jobs", applyJobs);
    var slider = document.getElementById("until-slider");
    var shown = document.getElementById("until-value");
    if (slider && shown) {
      slider.addEventListener("input", function () { shown.textContent = slider.value; });
      slider.addEventListener("change", function () { slider.form.submit(); });
    }
  });
})();
