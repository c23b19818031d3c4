"""Views of the agent workspace. Thin: they read through selectors, write through services, and
answer a bad request with the service's message."""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.contrib import messages as flash
from django.db import IntegrityError, transaction
from django.db import connection as db_connection
from django.db.models import F, Max, Prefetch
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from cs_portal.portal import selectors, services
from cs_portal.portal.workspace.access import (
    REFUSED_WHY,
    agent_required,
    redirect_back,
    unsent_correction,
    unsent_correction_drop,
    unsent_correction_keep,
    unsent_reply_keep,
    unsent_reply_take,
)
from cs_portal.portal.models import AgentProfile, ConversationStatus, Message, Sender
from translation import errors
from translation.languages import LANGUAGES
from translation.models import Translation, TranslationStatus
from translation.services import translation_request, translation_retry

# A live stream lasts this long, then the browser's EventSource reconnects by itself: a
# worker thread is never held for long, and a restarted server is picked up.
STREAM_SECONDS = 25
STREAM_POLL_S = 0.25


def _conversation(request: HttpRequest, conversation_id: int):
    try:
        return selectors.conversation_get_for_agent(agent=request.agent, conversation_id=conversation_id)
    except errors.NotFound:
        return None


def _an_id(value: str) -> bool:
    """``value`` is a row's id as a form or a query string carries it: ASCII digits, within a
    bigint."""
    return value.isascii() and value.isdigit() and len(value) <= 18


def _not_found(request: HttpRequest, what: str) -> HttpResponse:
    return render(request, "workspace/not_found.html", {"what": what}, status=404)


# --- Inbox -------------------------------------------------------------------------------------

@agent_required
def inbox(request: HttpRequest) -> HttpResponse:
    context = _inbox_context(request)
    template = "workspace/_inbox_rows.html" if request.GET.get("partial") else "workspace/inbox.html"
    return render(request, template, context)


def _teammates(agent: AgentProfile):
    teammates = AgentProfile.objects.select_related("user").filter(user__is_active=True)
    return teammates.filter(team=agent.team_id) if agent.team_id else teammates


def _inbox_context(request: HttpRequest) -> dict:
    filters = {
        "status": request.GET.get("status", ""),
        "language": request.GET.get("language", ""),
        "assignee": request.GET.get("assignee", ""),
        "query": request.GET.get("q", "").strip(),
    }
    # A filter the inbox does not offer is dropped, not searched for (a NUL or a number beyond
    # any id would reach the database as an error).
    if filters["status"] not in ("", *ConversationStatus.values):
        filters["status"] = ""
    if filters["language"] not in LANGUAGES:
        filters["language"] = ""
    if filters["assignee"] not in ("me", "none") and not _an_id(filters["assignee"]):
        filters["assignee"] = ""
    filters["query"] = filters["query"].replace("\x00", "")
    conversations = selectors.inbox(agent=request.agent, **filters)[:200]
    teammates = _teammates(request.agent)
    params = request.GET.copy()
    params.pop("partial", None)
    page_path = request.path + (f"?{params.urlencode()}" if params else "")
    return {
        "agent": request.agent, "conversations": conversations, "filters": filters, "page_path": page_path,
        "refresh_path": page_path + ("&" if params else "?") + "partial=1",
        "statuses": ConversationStatus.values, "languages": sorted(LANGUAGES.items()), "teammates": teammates,
    }


# --- Conversation --------------------------------------------------------------------------------

def _thread(conversation, agent: AgentProfile, *, latest: int | None = None) -> tuple[list[dict], int]:
    """Each message as the agent sees it: the translation meant for them, the original, drafts
    with their translation and back-translation; with ``latest``, only the latest that many
    (drafts, last in the thread, always among them: the thread re-renders at every change of a
    live conversation, and a long one was read and drawn whole each time). Also returns how
    many earlier messages were left out."""
    back = Translation.objects.order_by("-id")
    messages = (
        conversation.messages.select_related("author__user")
        .prefetch_related(Prefetch("translations", queryset=Translation.objects.select_related(
            "corrected_by__user"
        ).prefetch_related(Prefetch("back_translations", queryset=back))))
    )
    # As the customer sees them: in the order they were sent; drafts last.
    if latest is None:
        rows, earlier = list(messages.order_by(F("delivered_at").asc(nulls_last=True), "id")), 0
    else:
        rows = list(messages.order_by(F("delivered_at").desc(nulls_first=True), "-id")[:latest])[::-1]
        earlier = conversation.messages.count() - len(rows) if len(rows) == latest else 0
    thread = []
    for message in rows:
        translations = {t.target_language: t for t in message.translations.all()}
        item = {"message": message, "language": LANGUAGES.get(message.language), "translations": translations}
        if message.sender == Sender.CUSTOMER:
            item["needs_translation"] = agent.needs_translation(message.language)
            item["mine"] = translations.get(agent.working_language)
        else:
            # A sent reply as it went out; a draft as it would go out now.
            customer_language = message.delivered_language or conversation.language or settings.DEFAULT_AGENT_LANGUAGE
            outgoing = translations.get(customer_language)
            item["outgoing"] = outgoing
            item["back"] = next(iter(outgoing.back_translations.all()), None) if outgoing else None
            item["customer_language"] = LANGUAGES.get(customer_language)
            item["ready"] = customer_language == message.language or bool(
                outgoing and outgoing.status == TranslationStatus.DONE
            )
        thread.append(item)
    return thread, earlier


@agent_required
def conversation_view(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _conversation(request, conversation_id)
    if conversation is None:
        return _not_found(request, f"Conversation {conversation_id}")
    services.conversation_mark_read(conversation=conversation, agent=request.agent)
    partial = bool(request.GET.get("partial"))
    # A reply kept while the agent was signed out goes back into the reply box (not on a closed
    # conversation, which shows none: it waits until the conversation opens again).
    shows_reply = request.method == "GET" and not partial and conversation.status != ConversationStatus.CLOSED
    unsent = unsent_reply_take(request, conversation.pk) if shows_reply else {}
    whole = request.GET.get("all") == "1"
    thread, earlier = _thread(conversation, request.agent, latest=None if whole else settings.WORKSPACE_THREAD_MESSAGES)
    context = {
        "agent": request.agent, "conversation": conversation, "thread": thread, "earlier": earlier, "whole": whole,
        "customer_language": LANGUAGES.get(conversation.language), "languages": sorted(LANGUAGES.items()),
        "statuses": ConversationStatus.values, "teammates": _teammates(request.agent), "unsent_reply": unsent,
        "message_max_chars": settings.MESSAGE_MAX_CHARS, "unsent_correction": unsent_correction(request),
    }
    template = "workspace/_thread.html" if partial else "workspace/conversation.html"
    return render(request, template, context)


def _act(request: HttpRequest, conversation_id: int, action, *, what: str = "") -> HttpResponse:
    """Run ``action`` on a conversation the agent may see; ``what`` names the object asked for
    in the not-found answer (a message of another team's conversation is answered as one that
    does not exist, not by naming its conversation)."""
    conversation = _conversation(request, conversation_id)
    if conversation is None:
        return _not_found(request, what or f"Conversation {conversation_id}")
    try:
        action(conversation)
    except errors.ApplicationError as exc:
        flash.error(request, exc.message)
    return redirect_back(request, reverse("workspace:conversation", args=[conversation.pk]))


@require_POST
@agent_required
def conversation_take(request, conversation_id: int):
    return _act(request, conversation_id, lambda c: services.conversation_take(conversation=c, agent=request.agent))


@require_POST
@agent_required
def conversation_assign(request, conversation_id: int):
    def assign(conversation):
        chosen = request.POST.get("assignee", "")
        assignee = (
            AgentProfile.objects.select_related("user").filter(pk=int(chosen), user__is_active=True).first()
            if _an_id(chosen) else None
        )
        if assignee is None:
            raise errors.ApplicationError("Choose an agent to assign the conversation to.")
        services.conversation_assign(conversation=conversation, assignee=assignee)

    return _act(request, conversation_id, assign)


@require_POST
@agent_required
def conversation_status(request, conversation_id: int):
    return _act(
        request, conversation_id,
        lambda c: services.conversation_set_status(conversation=c, status=request.POST.get("status", "")),
    )


@require_POST
@agent_required
def reply(request, conversation_id: int):
    """A draft of the reply, translated for the agent to check; a reply refused (too long, the
    route overloaded, the conversation closed meanwhile) comes back to the reply box with the
    reason, never lost."""
    text = request.POST.get("text", "")

    def draft(conversation):
        try:
            services.reply_draft_create(conversation=conversation, agent=request.agent, text=text)
        except errors.ApplicationError:
            unsent_reply_keep(request, conversation.pk, text, agent=str(request.user.pk), why=REFUSED_WHY)
            raise

    return _act(request, conversation_id, draft)


def _act_on_message(request: HttpRequest, message_id: int, action, *, what: str = "") -> HttpResponse:
    """``_act`` on the message's conversation (which checks the agent may see it)."""
    what = what or f"Message {message_id}"
    message = Message.objects.filter(pk=message_id).first()
    if message is None:
        return _not_found(request, what)
    return _act(request, message.conversation_id, lambda conversation: action(message), what=what)


@require_POST
@agent_required
def message_correct(request, message_id: int):
    """The agent's correction of a draft's translation; one refused (too long, a NUL character)
    stays in its box, with the reason, until it is saved."""
    text = request.POST.get("text", "")

    def correct(message):
        try:
            services.reply_correct(message=message, agent=request.agent, text=text)
        except errors.ApplicationError:
            unsent_correction_keep(request, message.pk, text)
            raise
        unsent_correction_drop(request, message.pk)

    return _act_on_message(request, message_id, correct)


@require_POST
@agent_required
def message_send(request, message_id: int):
    return _act_on_message(request, message_id, lambda m: services.reply_send(message=m, agent=request.agent))


@require_POST
@agent_required
def message_language(request, message_id: int):
    return _act_on_message(
        request, message_id,
        lambda m: services.message_language_override(message=m, agent=request.agent, language=request.POST.get("language", "")),
    )


@require_POST
@agent_required
def message_translate(request, message_id: int):
    """Translate a message into the agent's language on demand (one that arrived before the
    agent joined the team, or while their translation was off)."""

    def translate(message):
        if message.translations.filter(target_language=request.agent.working_language).exists():
            return
        if message.language == request.agent.working_language:
            raise errors.ApplicationError("This message is already in your working language.")
        try:
            with transaction.atomic():
                translation_request(message=message, target_language=request.agent.working_language)
        except IntegrityError:  # requested meanwhile (a second click, a teammate of the same language)
            return

    return _act_on_message(request, message_id, translate)


@require_POST
@agent_required
def translation_retry_view(request, translation_id: int):
    """Retry a failed translation of a message the agent may see, or of its back-translation."""
    what = f"Translation {translation_id}"
    translation = Translation.objects.select_related("message", "back_translation_of").filter(pk=translation_id).first()
    origin = translation.back_translation_of if translation and translation.back_translation_of_id else translation
    if origin is None or not origin.message_id:
        return _not_found(request, what)
    return _act_on_message(request, origin.message_id, lambda m: translation_retry(translation=translation), what=what)


# --- The agent's own settings ---------------------------------------------------------------------

@agent_required
def settings_view(request: HttpRequest) -> HttpResponse:
    """The agent's languages and translation switch; a change applies to the next message."""
    agent = request.agent
    if request.method == "POST":
        try:
            services.agent_update_languages(
                agent=agent, working_language=request.POST.get("working_language", ""),
                native_languages=request.POST.getlist("native_languages"),
                translation_enabled=request.POST.get("translation_enabled") == "on",
            )
        except errors.ApplicationError as exc:
            flash.error(request, exc.message)
        else:
            flash.success(request, "Your languages are saved.")
            return HttpResponseRedirect(reverse("workspace:settings"))
    return render(request, "workspace/settings.html", {"agent": agent, "languages": sorted(LANGUAGES.items())})


# --- Live updates ---------------------------------------------------------------------------------

def _conversation_stamp(conversation_id: int) -> tuple:
    messages = Message.objects.filter(conversation_id=conversation_id)
    translations = Translation.objects.filter(message__conversation_id=conversation_id)
    backs = Translation.objects.filter(back_translation_of__message__conversation_id=conversation_id)
    return (
        messages.aggregate(n=Max("id"), at=Max("updated_at"))["at"],
        translations.aggregate(at=Max("updated_at"))["at"],
        backs.aggregate(at=Max("updated_at"))["at"],
        selectors.Conversation.objects.filter(pk=conversation_id).values_list("updated_at", flat=True).first(),
    )


def _inbox_stamp(agent: AgentProfile) -> tuple:
    visible = selectors.conversations_visible_to(agent)
    return tuple(visible.aggregate(n=Max("id"), at=Max("updated_at"), last=Max("last_message_at")).values())


def _event_id(stamp: tuple) -> str:
    return hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]


@agent_required
def events(request: HttpRequest) -> HttpResponse:
    """Server-sent events: ``change`` whenever the conversation (``?conversation=<id>``) or the
    agent's inbox changes, checked every STREAM_POLL_S; the page then fetches the new HTML.

    Each event carries the state it announces as its ``id``; the browser sends the last one back
    when it reconnects (``Last-Event-ID``), so a change made while it was away is announced at
    once. A first connection is always told to refresh: the page may be older than the stream.
    """
    conversation_id = request.GET.get("conversation", "")
    if conversation_id:
        if not _an_id(conversation_id) or _conversation(request, int(conversation_id)) is None:
            return _not_found(request, f"Conversation {conversation_id}")
        stamp = lambda: _conversation_stamp(int(conversation_id))  # noqa: E731
    else:
        agent = request.agent
        stamp = lambda: _inbox_stamp(agent)  # noqa: E731

    first = stamp()  # before the response starts: a change after this moment is never missed
    seen = request.headers.get("Last-Event-ID")

    def stream():
        last = first
        try:
            yield "retry: 500\n\n"
            if seen != _event_id(first):
                yield f"id: {_event_id(first)}\nevent: change\ndata: {{}}\n\n"
            deadline = time.monotonic() + STREAM_SECONDS
            while time.monotonic() < deadline:
                time.sleep(STREAM_POLL_S)
                current = stamp()
                if current != last:
                    last = current
                    yield f"id: {_event_id(current)}\nevent: change\ndata: {{}}\n\n"
                else:
                    yield ": keep-alive\n\n"
        finally:
            # A stream ends when the browser leaves or the time is up: its connection is not
            # kept for a next request this thread may never serve (unless a transaction
            # around the request still needs it).
            if not db_connection.in_atomic_block:
                db_connection.close()

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


# --- The customer's side, for demos and tests ------------------------------------------------------

def customer_chat(request: HttpRequest) -> HttpResponse:
    """A small page that plays the customer through the public API (the key is typed in, or
    given in the fragment, #key=...; the page never sees more than a customer channel would)."""
    api_root = reverse("api-conversations").rsplit("/", 1)[0]  # /api/v1, under URL_PREFIX where one is set
    return render(request, "workspace/customer_chat.html", {"languages": sorted(LANGUAGES.items()), "api_root": api_root})
