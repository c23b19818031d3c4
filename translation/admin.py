import time

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.forms.models import BaseModelFormSet
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from simple_history.admin import SimpleHistoryAdmin

from translation.admin_filters import QueueFilter, SourceLanguageFilter, TargetLanguageFilter
from translation.errors import ApplicationError
from translation.execution import translation_fail
from translation.languages import LANGUAGES
from translation.models import GlossaryTerm, LanguageRoute, Translation, TranslationStatus
from translation.queues import queue_consumers
from translation.routing import share_problems
from translation.selectors import RouteFigures, route_figures, waiting_by_queue
from translation.sending import translations_enqueue
from translation.services import translation_sample, translations_retry


ADMIN_RETRY_LIMIT = 500


@admin.register(Translation)
class TranslationAdmin(admin.ModelAdmin):
    list_display = [
        "id", "message", "source_language", "target_language", "status", "route", "variant", "queue", "worker",
        "attempts", "queue_wait", "compute", "model_time", "reason", "created_at",
    ]
    list_filter = ["status", TargetLanguageFilter, QueueFilter, SourceLanguageFilter]
    list_select_related = ["message", "route"]
    show_full_result_count = False  # one count of the ledger per page, not two
    search_fields = ["text", "failure_reason", "message__text", "input_text"]
    readonly_fields = [field.name for field in Translation._meta.fields]
    actions = ["retry_failed", "send_unsent"]

    def has_add_permission(self, request) -> bool:
        return False  # translations are requested by messages, never by hand

    def has_delete_permission(self, request, obj=None) -> bool:
        # The ledger: a queued or running row deleted here would be a job dropped without a trace
        # (its worker skips a missing id), a finished one a hole in the figures. A conversation's
        # or a message's deletion (its data erased) still takes its translations with it: Django
        # asks this admin about each of them then, from that page.
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name and match.url_name.startswith("translation_translation_"):
            return False
        return super().has_delete_permission(request, obj)

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":
            warn_unconsumed_queues(self, request, queue_consumers())
        return super().changelist_view(request, extra_context)

    @admin.display(description="failure reason")
    def reason(self, obj: Translation) -> str:
        return obj.failure_reason[:120]

    @admin.display(description="queue wait (s)")
    def queue_wait(self, obj: Translation) -> str:
        return f"{obj.queue_wait_seconds:.3f}" if obj.queue_wait_seconds is not None else "-"

    @admin.display(description="compute (s)")
    def compute(self, obj: Translation) -> str:
        return f"{obj.compute_seconds:.3f}" if obj.compute_seconds is not None else "-"

    @admin.display(description="of which the model (s)")
    def model_time(self, obj: Translation) -> str:
        return f"{obj.forward_ms / 1000:.3f}" if obj.forward_ms is not None else "-"

    @admin.action(permissions=["change"], description="Retry the selected failed translations")
    def retry_failed(self, request, queryset) -> None:
        """At most ``ADMIN_RETRY_LIMIT`` per action (each is a transaction of its own; thousands
        selected after an outage would outlast the web server's timeout): the rest are said, for
        the action again or ``manage.py retry_failed``."""
        done = translations_retry(queryset, limit=ADMIN_RETRY_LIMIT)
        for reason, count in sorted(done.refused.items()):
            self.message_user(request, f"{count} not retried: {reason}", messages.ERROR)
        self.message_user(request, f"{done.sent} translation(s) sent again.", messages.SUCCESS)
        if done.left:
            self.message_user(request, f"{done.left} more selected failed translation(s) were left: run the action "
                                       "again, or `manage.py retry_failed` for many at once.", messages.WARNING)

    @admin.action(permissions=["change"], description="Send queued translations that never reached a queue")
    def send_unsent(self, request, queryset) -> None:
        # Listed once: sending stamps the rows, so the same query counted again would find none.
        unsent = list(queryset.filter(status=TranslationStatus.QUEUED, enqueued_at__isnull=True).select_related("message"))
        if not unsent:
            self.message_user(request, "None of the selected translations is queued and unsent.", messages.INFO)
            return
        sent = translations_enqueue(unsent)
        if sent == len(unsent):
            self.message_user(request, f"{sent} unsent translation(s) sent.", messages.SUCCESS)
        else:
            self.message_user(request, f"{sent} of {len(unsent)} unsent translation(s) sent; the rest stay queued "
                                       "(the send failed; the reconciler sends them again).", messages.WARNING)


@admin.register(GlossaryTerm)
class GlossaryTermAdmin(admin.ModelAdmin):
    """Terms kept as they are (leave the translation empty) or translated one fixed way. A change
    applies to the next batch a worker runs; no restart."""

    list_display = ["term", "target_language", "translation", "note", "updated_at"]
    list_filter = ["target_language"]
    search_fields = ["term", "translation", "note"]


# --- Language routes -------------------------------------------------------------------------


def warn_unconsumed_queues(model_admin: admin.ModelAdmin, request, consumers) -> None:
    """Name each queue that has an enabled route or queued jobs and no worker consuming it."""
    if consumers is None:
        model_admin.message_user(
            request, "The broker cannot be reached: which queues are consumed is unknown.", messages.ERROR
        )
        return
    enabled_queues = set(LanguageRoute.objects.filter(enabled=True).values_list("queue", flat=True))
    waiting = waiting_by_queue()
    for queue in sorted((enabled_queues | set(waiting)) - set(consumers)):
        jobs = waiting.get(queue, 0)
        model_admin.message_user(
            request,
            f"No worker consumes {queue}: {jobs} queued job(s) wait there. Start a worker for it "
            "(placement plan or start_workers), or route its pairs elsewhere.",
            messages.ERROR if jobs else messages.WARNING,
        )

SAMPLE_WAIT_S = 10.0
SPLIT_HINT = " To change a split, edit the pair's shares and switches together in the route list, and save once."


class LanguageRouteForm(forms.ModelForm):
    class Meta:
        model = LanguageRoute
        fields = "__all__"

    def _post_clean(self) -> None:
        super()._post_clean()
        if self._errors:
            return
        # The shares of every pair this save touches (the route's pair, and its former pair if
        # the languages changed), as they would be after the save.
        route = self.instance
        pairs = Q(source_language=route.source_language, target_language=route.target_language)
        if route.pk:
            old = LanguageRoute.objects.filter(pk=route.pk).values("source_language", "target_language").first()
            if old:
                pairs |= Q(**old)
        others = LanguageRoute.objects.filter(pairs).exclude(pk=route.pk)
        problems = share_problems([*others, route])
        if problems:
            self.add_error("traffic_share", " ".join(problems) + SPLIT_HINT)


class RouteListForm(forms.ModelForm):
    """A row of the route list: its one-active-route rule is checked with the other rows, by the
    formset, so that a swap (disable one, enable another) is one save."""

    def _post_clean(self) -> None:
        self.instance.checked_as_a_set = True
        super()._post_clean()


class RouteListFormSet(BaseModelFormSet):
    """The route list's editable columns (share, enabled) validated together: an A/B split, or a
    swap of a pair's active route, changes in one save."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        edited = {form.instance.pk: form.instance for form in self.forms}
        pairs = Q(pk__in=[])
        for route in edited.values():
            pairs |= Q(source_language=route.source_language, target_language=route.target_language)
        rows = [edited.get(row.pk, row) for row in LanguageRoute.objects.filter(pairs)]
        problems = share_problems(rows)
        active: dict[tuple, list[LanguageRoute]] = {}
        for row in rows:
            if row.enabled:
                active.setdefault((row.source_language, row.target_language, row.variant), []).append(row)
        for (source, target, variant), twins in sorted(active.items()):
            if len(twins) > 1:
                names = ", ".join(str(twin) for twin in twins)
                problems.append(
                    f"Only one route may be active for {source}→{target}"
                    + (f" variant '{variant}'" if variant else "") + f": {names} would all be."
                )
        if problems:
            raise ValidationError(problems)
        # The admin saves rows in this order: switching routes off first keeps the database's
        # one-active-route constraint true after every statement of a swap.
        self.forms.sort(key=lambda form: bool(form.cleaned_data.get("enabled")))


class SampleForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=5000)
    source_language = forms.ChoiceField(
        required=False, help_text="For routes that take any source language.",
        choices=[("", "—")] + [(code, f"{code} ({lang.name})") for code, lang in sorted(LANGUAGES.items())],
    )


@admin.register(LanguageRoute)
class LanguageRouteAdmin(SimpleHistoryAdmin):
    """Routes: which queue, model and knobs serve a language pair. A save is followed by every
    portal process and worker within TRANSLATION_ROUTES_CHECK_S; no restart."""

    form = LanguageRouteForm
    list_display = [
        "__str__", "source_language", "target_language", "variant", "traffic_share", "enabled", "queue", "consumers",
        "model", "precision", "knobs", "fallback", "jobs_last_hour", "p50_ms", "p95_ms", "failed_last_hour", "sample",
    ]
    list_display_links = ["__str__"]
    list_editable = ["traffic_share", "enabled"]
    list_filter = ["enabled", "target_language", "source_language", "queue", "precision"]
    search_fields = ["model_name", "queue", "note", "adapter"]
    list_select_related = ["fallback"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["source_language", "target_language", "enabled", "fallback", "note"]}),
        ("A/B test", {"fields": ["variant", "traffic_share"]}),
        ("Serving", {"fields": ["queue", "engine", "model_name", "adapter", "precision"]}),
        ("Batching and limits", {"fields": ["max_batch_size", "max_wait_ms", "max_input_chars", "max_queued"]}),
        ("Changes", {"fields": ["created_at", "updated_at"]}),
    ]
    actions = ["translate_sample"]

    def get_changelist_form(self, request, **kwargs):
        return super().get_changelist_form(request, form=RouteListForm, **kwargs)

    def get_changelist_formset(self, request, **kwargs):
        return super().get_changelist_formset(request, formset=RouteListFormSet, **kwargs)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one at a time, from the route's page (shares checked)
        return actions

    def delete_view(self, request, object_id, extra_context=None):
        route = LanguageRoute.objects.filter(pk=object_id).first()
        if route is not None and request.method == "POST":
            remaining = LanguageRoute.objects.filter(
                source_language=route.source_language, target_language=route.target_language
            ).exclude(pk=route.pk)
            problems = share_problems(remaining)
            if route.enabled and problems:
                self.message_user(
                    request, f"{route} was not deleted: " + " ".join(problems) + " Disable it first, or adjust the shares.",
                    messages.ERROR,
                )
                return HttpResponseRedirect(reverse("admin:translation_languageroute_change", args=[route.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_urls(self):
        urls = [
            path("sample/", self.admin_site.admin_view(self.sample_view), name="translation_languageroute_sample"),
        ]
        return urls + super().get_urls()

    # The page's routes get their ledger figures, consumers and queue depth in a few queries,
    # not a few per row.
    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        if request.method != "GET":  # a save or an action: its redirect shows the figures
            return changelist
        rows = list(changelist.result_list)
        figures = route_figures([row.pk for row in rows])
        consumers = queue_consumers()
        for row in rows:
            row.figures = figures.get(row.pk, RouteFigures())
            row.consumers = None if consumers is None else consumers.get(row.queue, [])
        self.warn_unconsumed(request, consumers)
        return changelist

    def warn_unconsumed(self, request, consumers) -> None:
        warn_unconsumed_queues(self, request, consumers)

    @staticmethod
    def _figures(route) -> RouteFigures:
        return getattr(route, "figures", None) or RouteFigures()

    @admin.display(description="workers")
    def consumers(self, route) -> str:
        workers = getattr(route, "consumers", None)
        if workers is None:
            return "?"
        if not workers:
            return mark_safe('<strong style="color:#ba2121">none</strong>')
        return format_html('<span title="{}">{}</span>', ", ".join(workers), len(workers))

    @admin.display(description="model", ordering="model_name")
    def model(self, route) -> str:
        name = route.model_name.rstrip("/").rsplit("/", 1)[-1]
        return format_html('<span title="{}">{}</span>', route.model_name, name + (" +LoRA" if route.adapter else ""))

    @admin.display(description="batch / wait")
    def knobs(self, route) -> str:
        return f"{route.max_batch_size} / {route.max_wait_ms} ms"

    @admin.display(description="jobs 1 h")
    def jobs_last_hour(self, route) -> int:
        return self._figures(route).jobs

    @admin.display(description="failed 1 h")
    def failed_last_hour(self, route) -> str:
        failed = self._figures(route).failed
        return format_html('<strong style="color:#ba2121">{}</strong>', failed) if failed else "0"

    @admin.display(description="p50 ms")
    def p50_ms(self, route) -> str:
        return "-" if self._figures(route).p50_ms is None else f"{self._figures(route).p50_ms:.0f}"

    @admin.display(description="p95 ms")
    def p95_ms(self, route) -> str:
        return "-" if self._figures(route).p95_ms is None else f"{self._figures(route).p95_ms:.0f}"

    @admin.display(description="")
    def sample(self, route) -> str:
        url = reverse("admin:translation_languageroute_sample") + f"?ids={route.pk}"
        return format_html('<a href="{}">try a sample</a>', url)

    @admin.action(description="Translate a sample through the selected routes")
    def translate_sample(self, request, queryset):
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        return HttpResponseRedirect(reverse("admin:translation_languageroute_sample") + f"?ids={ids}")

    def sample_view(self, request):
        """Send a sample through each chosen route's real queue and show what came back, with
        its latency; a route whose queue nobody consumes shows as still queued."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            ids = [int(part) for part in request.GET.get("ids", "").split(",") if part]
        except ValueError:
            ids = []
        routes = list(LanguageRoute.objects.filter(pk__in=ids))
        if not routes:
            self.message_user(request, "Choose at least one route to try.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:translation_languageroute_changelist"))
        form = SampleForm(request.POST or None)
        results, errors_ = [], []
        if request.method == "POST" and not self.has_change_permission(request):
            self.message_user(request, "Sending a sample needs the permission to change routes.", messages.ERROR)
        elif request.method == "POST" and form.is_valid():
            sent = []
            for route in routes:
                try:
                    with transaction.atomic():
                        sent.append(translation_sample(
                            route=route, text=form.cleaned_data["text"],
                            source_language=form.cleaned_data["source_language"],
                        ))
                except ApplicationError as exc:
                    errors_.append(f"{route}: {exc.message}")
            results = self._wait_for_samples(sent)
        context = {
            **self.admin_site.each_context(request),
            "title": "Translate a sample", "opts": self.model._meta, "routes": routes, "form": form,
            "results": results, "errors": errors_, "wait_s": SAMPLE_WAIT_S,
        }
        return TemplateResponse(request, "admin/translation/languageroute/sample.html", context)

    @staticmethod
    def _wait_for_samples(sent: list[Translation]) -> list[Translation]:
        deadline = time.monotonic() + SAMPLE_WAIT_S
        pending = {row.pk for row in sent}
        while pending and time.monotonic() < deadline:
            time.sleep(0.05)
            finished = Translation.objects.filter(pk__in=pending, status__gte=TranslationStatus.DONE)
            pending -= set(finished.values_list("pk", flat=True))
        rows = list(Translation.objects.filter(pk__in=[row.pk for row in sent]).select_related("route"))
        # Nobody waits for a sample after this page: one still unanswered is failed with the
        # reason (a worker that takes it later skips it), so it never sits in a queue's count.
        for row in rows:
            if row.pk in pending:
                translation_fail(
                    translation_id=row.pk,
                    reason=f"Sample not answered within {SAMPLE_WAIT_S:g} s: is a worker consuming {row.queue}?",
                )
        return rows


@admin.register(LanguageRoute.history.model)
class RouteChangeAdmin(admin.ModelAdmin):
    """Who changed which route, when, and what: one row per saved version."""

    list_display = ["history_date", "history_user", "action", "route", "changes"]
    list_select_related = ["history_user"]
    list_per_page = 50
    list_filter = ["history_type", "history_user", "target_language"]
    date_hierarchy = "history_date"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="action", ordering="history_type")
    def action(self, record) -> str:
        return {"+": "created", "~": "changed", "-": "deleted"}[record.history_type]

    @admin.display(description="route")
    def route(self, record) -> str:
        variant = f" [{record.variant}]" if record.variant else ""
        return f"{record.source_language}→{record.target_language}{variant} (#{record.id})"

    @admin.display(description="changes")
    def changes(self, record) -> str:
        previous = record.prev_record
        if previous is None:
            return "-"
        delta = record.diff_against(previous)
        return "; ".join(f"{change.field}: {change.old!r} → {change.new!r}" for change in delta.changes) or "-"
