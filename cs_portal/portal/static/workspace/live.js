// Live pages: an element with data-live (an event-stream URL) and data-refresh (a URL giving its
// new inner HTML) is re-rendered whenever the server says something changed. EventSource
// reconnects by itself when a stream ends. A refresh waits while the agent is typing in it.
(function () {
  function live(element) {
    let pending = false;
    let submitting = false;
    element.addEventListener("submit", () => { submitting = true; });  // the page is about to change anyway
    function refresh() {
      if (submitting) return;
      const active = document.activeElement;
      if (active && element.contains(active) && (active.tagName === "TEXTAREA" || active.tagName === "SELECT")) {
        pending = true;  // do not replace what the agent is editing; try again when they leave it
        return;
      }
      pending = false;
      fetch(element.dataset.refresh, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then((response) => {
          if (response.redirected) {  // signed out meanwhile: show the sign-in page, not a fragment of it
            window.location.reload();
            return Promise.reject("signed out");
          }
          return response.ok ? response.text() : Promise.reject(response.status);
        })
        .then((html) => {
          const target = element.tagName === "TABLE" ? element.querySelector("tbody") : element;
          target.innerHTML = html;
          element.dispatchEvent(new CustomEvent("refreshed"));
        })
        .catch(() => { pending = true; });
    }
    // Leaving a field may be a click on its form's button: give the click time to submit first.
    element.addEventListener("focusout", () => { if (pending) setTimeout(refresh, 400); });
    const source = new EventSource(element.dataset.live);
    source.addEventListener("change", refresh);
  }
  document.querySelectorAll("[data-live][data-refresh]").forEach(live);
})();
