// Forms send the browser's current CSRF secret. Signing in (again, or in another tab) gives the
// browser a new one, and the tokens rendered into pages opened before it are refused: every form
// on such a page would answer 403 until a reload. So as a form is posted, its token becomes the
// csrftoken cookie's value, which Django accepts as the token (the value its documentation has
// scripts read for their requests). Without the cookie (renamed, HttpOnly), the rendered token
// goes as before.
(function () {
  function cookieSecret() {
    const found = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return found ? decodeURIComponent(found[1]) : null;
  }
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
    const secret = cookieSecret();
    if (!secret) return;
    form.querySelectorAll("input[name=csrfmiddlewaretoken]").forEach((input) => { input.value = secret; });
  }, true);
})();
