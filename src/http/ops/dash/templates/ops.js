// Live refresh for read-only pages: reload every N seconds (body data-refresh),
// only while the tab is visible, and never while a form field has focus.
(function () {
  var every = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (!every) { return; }
  var timer = null;
  function schedule() {
    clearTimeout(timer);
    if (document.visibilityState === "visible") {
      timer = setTimeout(function () {
        var a = document.activeElement;
        if (a && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) { schedule(); return; }
        location.reload();
      }, every * 1000);
    }
  }
  document.addEventListener("visibilitychange", schedule);
  schedule();
})();
