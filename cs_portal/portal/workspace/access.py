"""Who may use the workspace, and what happens to a form when they may not: the agent check
every view takes, a form posted after the session ended (its reply kept for its agent), the
one check of a page to go back to, and the page for a form Django's CSRF check refused."""

from __future__ import annotations

import time
from functools import wraps

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse

from cs_portal.portal.models import AgentProfile

# A reply typed while signed out waits in the session for the sign-in of the agent who typed it
# (django.contrib.auth.login keeps an anonymous session's data), for an hour at most.
UNSENT_REPLY = "workspace_unsent_reply"
UNSENT_REPLY_KEPT_S = 3600
KEPT_CHARS = 4  # times the longest message taken: a reply too long is kept for the agent to shorten
# Who last used the workspace in this browser (a signed cookie): a reply kept while signed out
# goes back to that agent only, never to another agent signing in on the same browser.
LAST_AGENT_COOKIE = "workspace_agent"
LAST_AGENT_SALT = "cs_portal.workspace.last-agent"
LAST_AGENT_MAX_AGE_S = 30 * 24 * 3600
SIGNED_OUT = "You were signed out, so that was not done. Sign in to go back to the page and do it again."
SIGNED_OUT_REPLY = "You were signed out, so your reply was not sent. Sign in: it will be back in the reply box."
# The workspace's addresses that answer only posts: never a page to go back to.
FORM_ADDRESSES = {"logout", "take", "assign", "status", "reply", "correct", "send", "language", "translate", "retry"}


def client_address(request: HttpRequest) -> str | None:
    """The address a request came from, for the sign-in lockout: behind a TLS proxy
    (``BEHIND_TLS_PROXY``), the last address of X-Forwarded-For, the one the proxy added (those
    before it are the client's to write), when it is an address (a port after it dropped); else
    the connection's. The lockout stores it in an address column: anything else would fail
    every sign-in."""
    if settings.BEHIND_TLS_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
        address = _address(forwarded)
        if address is not None:
            return address
    return request.META.get("REMOTE_ADDR")


def _address(text: str) -> str | None:
    """``text`` as an IP address, or None: ``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:443``."""
    import ipaddress

    candidates = [text]
    if text.startswith("[") and "]" in text:
        candidates = [text[1:text.index("]")]]
    elif text.count(":") == 1:
        candidates.append(text.split(":")[0])
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def locked_out(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """The answer to a sign-in refused for too many failures in a row (django-axes): said in the
    portal's words, with how long to wait, status 429."""
    minutes = max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    context = {"limit": settings.AXES_FAILURE_LIMIT, "minutes": minutes}
    return render(request, "workspace/locked_out.html", context, status=429)


def agent_required(view):
    """Signed in, and an agent (a user without an agent profile gets a page saying so).

    A page asked for while signed out leads to the sign-in and back, as ``login_required`` does.
    A form posted while signed out (a session that expired, a sign-out in another tab) is not
    done: the sign-in leads back to the page the form was on (the form's own address answers
    only posts), the sign-in page says so, and a reply's text is kept for that conversation's
    reply box, for the agent who typed it."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            if request.method in ("GET", "HEAD"):
                return redirect_to_login(request.get_full_path())
            return _signed_out_post(request, kwargs)
        agent = AgentProfile.objects.select_related("user", "team").filter(user=request.user).first()
        if agent is None:
            return render(request, "workspace/not_an_agent.html", status=403)
        request.agent = agent
        unsent = request.session.get(UNSENT_REPLY)
        if unsent is not None and (not isinstance(unsent, dict) or unsent.get("agent") != str(request.user.pk)):
            del request.session[UNSENT_REPLY]  # another agent's reply (a shared browser): not theirs to see
        response = view(request, *args, **kwargs)
        if request.get_signed_cookie(LAST_AGENT_COOKIE, default=None, salt=LAST_AGENT_SALT) != str(request.user.pk):
            response.set_signed_cookie(LAST_AGENT_COOKIE, str(request.user.pk), salt=LAST_AGENT_SALT,
                                       max_age=LAST_AGENT_MAX_AGE_S, httponly=True, samesite="Lax",
                                       secure=settings.SESSION_COOKIE_SECURE, path=settings.SESSION_COOKIE_PATH)
        return response

    return wrapper


def _signed_out_post(request: HttpRequest, kwargs: dict) -> HttpResponse:
    page = _local_page(request, request.POST.get("next") or request.META.get("HTTP_REFERER", ""),
                       reverse("workspace:inbox"))
    writer = request.get_signed_cookie(LAST_AGENT_COOKIE, default=None, salt=LAST_AGENT_SALT)
    if request.resolver_match.url_name == "reply" and writer and unsent_reply_keep(
        request, kwargs["conversation_id"], request.POST.get("text", ""), agent=writer, why=SIGNED_OUT_WHY
    ):
        flash.warning(request, SIGNED_OUT_REPLY)
    else:
        flash.warning(request, SIGNED_OUT)
    return redirect_to_login(page)


# Why a reply came back to its box: its agent had been signed out, or the reply was refused (too
# long, the route overloaded, the conversation closed meanwhile: the error says which).
SIGNED_OUT_WHY, REFUSED_WHY = "signed_out", "refused"


def unsent_reply_keep(request: HttpRequest, conversation_id: int, text: str, *, agent: str, why: str) -> bool:
    """Keep a reply that was not sent for the conversation's reply box, for ``agent`` (a user's
    pk) only; False if there was nothing to keep."""
    if not text.strip():
        return False
    request.session[UNSENT_REPLY] = _kept(text, agent, conversation=conversation_id, why=why)
    return True


def _kept(text: str, agent: str, **where) -> dict:
    """A text kept in the session for ``agent``'s box, from now on (cut, if it is far too long)."""
    return {**where, "agent": agent, "at": time.time(), "text": text[:KEPT_CHARS * settings.MESSAGE_MAX_CHARS]}


def _fresh(kept: dict) -> bool:
    at = kept.get("at")
    return isinstance(at, (int, float)) and time.time() - at <= UNSENT_REPLY_KEPT_S


# A correction the portal refused (too long, a NUL character) stays for its draft's box until it
# is saved, for the agent who typed it, an hour at most: the box lives in the thread the page
# refreshes live, so it is shown at every rendering of the thread, not taken once.
UNSENT_CORRECTION = "workspace_unsent_correction"


def unsent_correction_keep(request: HttpRequest, message_id: int, text: str) -> None:
    if text.strip():
        request.session[UNSENT_CORRECTION] = _kept(text, str(request.user.pk), message=message_id)


def unsent_correction(request: HttpRequest) -> tuple[int, str] | None:
    """(message id, text) of the signed-in agent's refused correction, while it is fresh."""
    kept = request.session.get(UNSENT_CORRECTION)
    if not isinstance(kept, dict):
        return None
    if kept.get("agent") != str(request.user.pk) or not _fresh(kept):
        del request.session[UNSENT_CORRECTION]
        return None
    return kept.get("message"), str(kept.get("text", ""))


def unsent_correction_drop(request: HttpRequest, message_id: int) -> None:
    """The correction of ``message_id`` was saved: nothing of it waits any more."""
    kept = request.session.get(UNSENT_CORRECTION)
    if isinstance(kept, dict) and kept.get("message") == message_id:
        del request.session[UNSENT_CORRECTION]


def unsent_reply_take(request: HttpRequest, conversation_id: int) -> dict[str, str]:
    """The reply its agent typed into this conversation and that was not sent, once (then
    forgotten): ``{"text": ..., "why": SIGNED_OUT_WHY or REFUSED_WHY}``, or ``{}``."""
    unsent = request.session.get(UNSENT_REPLY)
    if not isinstance(unsent, dict) or unsent.get("conversation") != conversation_id:
        return {}
    del request.session[UNSENT_REPLY]
    text = str(unsent.get("text", "")) if _fresh(unsent) else ""
    return {"text": text, "why": REFUSED_WHY if unsent.get("why") == REFUSED_WHY else SIGNED_OUT_WHY} if text else {}


def _local_page(request: HttpRequest, url: str, default: str) -> str:
    """``url`` as the path (and query) of one of this site's pages, or ``default``: a URL of
    another site, or an address that answers only posts, is not a page to go back to."""
    from urllib.parse import urlsplit

    from django.urls import Resolver404, get_script_prefix, resolve
    from django.utils.http import url_has_allowed_host_and_scheme

    if not url or not url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()},
                                                      require_https=request.is_secure()):
        return default
    parts = urlsplit(url)
    prefix = get_script_prefix()  # "/", or URL_PREFIX + "/": the portal's pages are under it
    if not parts.path.startswith(prefix):
        return default
    try:
        match = resolve("/" + parts.path[len(prefix):])
    except Resolver404:
        return default
    if match.namespace == "workspace" and match.url_name in FORM_ADDRESSES:
        return default
    return parts.path + (f"?{parts.query}" if parts.query else "")


def redirect_back(request: HttpRequest, default: str) -> HttpResponseRedirect:
    return HttpResponseRedirect(_local_page(request, request.POST.get("next", ""), default))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """The answer to a form Django's CSRF check refused (``CSRF_FAILURE_VIEW``), in the portal's
    words instead of Django's bare 403 page; nothing was done. Each cause is said as such: the
    browser sends no cookies; it sent no Referer over HTTPS (a privacy setting); the request
    came from an address the portal does not trust (a proxy's address missing from
    ``CSRF_TRUSTED_ORIGINS``); the form's token is older than the browser's CSRF secret (a page
    kept open from before a sign-in: the workspace's own forms take the current secret as they
    are sent, forms.js, so that is a page without it, the admin's or a cached one); or the form
    came without a well-formed token at all."""
    from django.middleware.csrf import REASON_NO_CSRF_COOKIE, REASON_NO_REFERER

    if reason == REASON_NO_CSRF_COOKIE:
        kind = "no_cookie"
    elif reason == REASON_NO_REFERER:
        kind = "no_referer"
    elif reason.startswith(("Origin checking failed", "Referer checking failed")):
        kind = "origin"
    elif reason.startswith("CSRF token from") and reason.endswith(" incorrect."):
        kind = "stale"
    else:  # missing, of the wrong length or characters
        kind = "malformed"
    back = _local_page(request, request.META.get("HTTP_REFERER", ""), reverse("workspace:inbox"))
    return render(request, "workspace/csrf_failure.html", {"kind": kind, "reason": reason, "back": back}, status=403)
