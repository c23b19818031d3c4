// Live pages: an element with data-live (an event-stream URL) and data-refresh (a URL giving its
// new inner HTML) is re-rendered whenever the server says something changed. EventSource
// reconnects by itself when a stream ends.
//
// A refresh never takes something from under the agent: it waits while they type in a field of
// it or hold a pointer down on it (a button replaced between press and release loses its click),
// and content the same as what is shown is left in place (open details, focus and selection
// stay). Each refresh ends with a "refreshed" event whose detail says whether it replaced the
// content.
(function () {
  // The content as rendered, less what differs on every render (Django's masked CSRF token).
  function rendered(node) {
    const copy = node.cloneNode(true);
    (copy.content || copy).querySelectorAll("input[name=csrfmiddlewaretoken]").forEach((i) => i.removeAttribute("value"));
    return copy.innerHTML.trim();
  }

  function live(element) {
    const target = element.tagName === "TABLE" ? element.querySelector("tbody") : element;
    let shown = rendered(target);
    let pending = false;  // a change came while the agent was busy with the element
    let submitting = false;  // the page is about to change anyway
    let pressed = false;
    let asked = 0;  // the latest fetch: an older answer arriving after a newer one is dropped

    function editing() {
      const active = document.activeElement;
      return active && target.contains(active) && (active.tagName === "TEXTAREA" || active.tagName === "SELECT");
    }
    function busy() {
      return pressed || editing();
    }
    function refresh() {
      if (submitting) return;
      pending = busy();
      if (pending) return;  // fetched once the agent is done
      const number = ++asked;
      fetch(element.dataset.refresh, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then((response) => {
          if (response.redirected) {  // signed out meanwhile: show the sign-in page, not a fragment of it
            window.location.reload();
            return Promise.reject("signed out");
          }
          return response.ok ? response.text() : Promise.reject(response.status);
        })
        .then((html) => {
          if (number !== asked || submitting) return;
          if (busy()) {
            pending = true;
            return;
          }
          const fresh = document.createElement("template");
          fresh.innerHTML = html;
          const now = rendered(fresh);
          const replaced = now !== shown;
          if (replaced) {
            target.replaceChildren(fresh.content);
            shown = now;
          }
          element.dispatchEvent(new CustomEvent("refreshed", { detail: { replaced } }));
        })
        .catch(() => {  // the server or the network failed: try again in a while
          if (number !== asked) return;
          pending = true;
          setTimeout(() => { if (pending && number === asked) refresh(); }, 2000);
        });
    }

    element.addEventListener("submit", () => { submitting = true; });
    element.addEventListener("pointerdown", (event) => {
      // A main-button press that may become a click; a field being edited waits by itself.
      if (event.button === 0 && event.isPrimary && !event.target.closest("select, textarea")) pressed = true;
    });
    // The release may land outside the element; the click (and a form's submit) it makes is
    // dispatched before a timer runs. A drag, or a window that loses focus meanwhile, may never
    // deliver it.
    const release = () => {
      if (!pressed) return;
      pressed = false;
      if (pending) setTimeout(refresh, 0);
    };
    document.addEventListener("pointerup", release);
    document.addEventListener("pointercancel", release);
    document.addEventListener("dragend", release);
    window.addEventListener("blur", release);
    // Leaving a field may be a click on its form's button: give the click time to submit first.
    element.addEventListener("focusout", () => { if (pending) setTimeout(refresh, 400); });
    const source = new EventSource(element.dataset.live);
    source.addEventListener("change", refresh);
  }
  document.querySelectorAll("[data-live][data-refresh]").forEach(live);
})();
