/* Live updates for the console's pages (loaded after htmx, deferred; the pages read fine without it).
   The page names its event stream in <body data-events>, starting at the feed cursor it was rendered at,
   so nothing committed in between is missed. Each event asks htmx to re-fetch the page's live regions
   ([data-live]; hx-get/hx-select on each), except a region where the operator is filling in a form. */
(function () {
  "use strict";
  var url = document.body.getAttribute("data-events");
  var badge = document.getElementById("live-status");
  if (!url || !window.EventSource || !window.htmx) { return; }
  function show(text, state) {
    if (badge) { badge.textContent = text; badge.className = "live " + state; }
    document.body.setAttribute("data-live-state", state);
  }
  function busy(region) {
    return region.querySelector("details.action[open]") !== null ||
      (document.activeElement !== null && region.contains(document.activeElement) &&
       /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName));
  }
  function refresh() {
    document.querySelectorAll("[data-live]").forEach(function (region) {
      if (!busy(region)) { window.htmx.trigger(region, "live"); }
    });
  }
  /* At most one refresh a second, and always one after the last event of a burst. */
  var timer = null, dirty = false;
  function settle() {
    if (dirty) { dirty = false; refresh(); timer = setTimeout(settle, 1000); } else { timer = null; }
  }
  var source = new EventSource(url);
  source.onopen = function () { show("live", "on"); };
  source.onerror = function () { show("reconnecting", "off"); };
  source.onmessage = function () {
    if (timer !== null) { dirty = true; return; }
    refresh();
    timer = setTimeout(settle, 1000);
  };
  function stop(text) { return function () { source.close(); show(text, "off"); }; }
  source.addEventListener("expired", stop("paused: reload the page"));
  source.addEventListener("failed", stop("stopped: reload the page"));
  document.body.addEventListener("htmx:responseError", stop("session over: reload the page"));
}());
