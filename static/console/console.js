/* Small helpers for the console pages (no framework). */
(function () {
  "use strict";

  // Task form: a column chip inserts "{column}" into the text template at the cursor.
  document.addEventListener("click", function (event) {
    var chip = event.target.closest("[data-insert]");
    if (!chip) return;
    var area = document.getElementById("id_text_template");
    if (!area) return;
    var text = chip.getAttribute("data-insert");
    var start = area.selectionStart == null ? area.value.length : area.selectionStart;
    var end = area.selectionEnd == null ? start : area.selectionEnd;
    area.value = area.value.slice(0, start) + text + area.value.slice(end);
    area.focus();
    area.selectionStart = area.selectionEnd = start + text.length;
    area.dispatchEvent(new Event("input", { bubbles: true }));
  });

  // htmx: a request answered by the login page means the session ended: go there instead of
  // swapping a login form into a fragment.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr && xhr.responseURL && new URL(xhr.responseURL).pathname === "/login/") {
      event.detail.shouldSwap = false;
      window.location.href = "/login/?next=" + encodeURIComponent(window.location.pathname);
    }
  });

  // htmx: show a message instead of failing silently when a request errors out.
  document.addEventListener("htmx:responseError", function (event) {
    var target = event.detail.target;
    if (!target) return;
    var status = event.detail.xhr ? event.detail.xhr.status : "";
    var p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = status === 403 || status === 401
      ? "Your session has ended: reload the page and log in again."
      : "The server could not answer (HTTP " + status + "). Try again.";
    target.replaceChildren(p);
  });
  document.addEventListener("htmx:sendError", function (event) {
    var target = event.detail.target;
    if (!target) return;
    var p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = "Cannot reach the console server. Check your connection and try again.";
    target.replaceChildren(p);
  });
})();
