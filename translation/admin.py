from django.contrib import admin, messages

from translation.errors import ApplicationError
from translation.models import GlossaryTerm, Translation, TranslationStatus
from translation.services import translation_enqueue, translation_retry


@admin.register(Translation)
class TranslationAdmin(admin.ModelAdmin):
    list_display = [
        "id", "message", "source_language", "target_language", "status", "queue", "worker", "attempts",
        "queue_wait", "compute", "reason", "created_at",
    ]
    list_filter = ["status", "target_language", "queue", "source_language"]
    search_fields = ["text", "failure_reason", "message__text"]
    readonly_fields = [field.name for field in Translation._meta.fields]
    actions = ["retry_failed", "send_unsent"]

    def has_add_permission(self, request) -> bool:
        return False  # translations are requested by messages, never by hand

    @admin.display(description="failure reason")
    def reason(self, obj: Translation) -> str:
        return obj.failure_reason[:120]

    @admin.display(description="queue wait (s)")
    def queue_wait(self, obj: Translation) -> str:
        return f"{obj.queue_wait_seconds:.3f}" if obj.queue_wait_seconds is not None else "-"

    @admin.display(description="compute (s)")
    def compute(self, obj: Translation) -> str:
        return f"{obj.compute_seconds:.3f}" if obj.compute_seconds is not None else "-"

    @admin.action(description="Retry the selected failed translations")
    def retry_failed(self, request, queryset) -> None:
        retried = 0
        for translation in queryset.filter(status=TranslationStatus.FAILED):
            try:
                translation_retry(translation=translation)
                retried += 1
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        self.message_user(request, f"{retried} translation(s) sent again.", messages.SUCCESS)

    @admin.action(description="Send queued translations that never reached a queue")
    def send_unsent(self, request, queryset) -> None:
        unsent = queryset.filter(status=TranslationStatus.QUEUED, enqueued_at__isnull=True)
        sent = sum(translation_enqueue(translation=t) for t in unsent.select_related("message"))
        level = messages.SUCCESS if sent == unsent.count() else messages.WARNING
        self.message_user(request, f"{sent} of {unsent.count()} unsent translation(s) sent; the rest stay queued.", level)


@admin.register(GlossaryTerm)
class GlossaryTermAdmin(admin.ModelAdmin):
    """Terms kept as they are (leave the translation empty) or translated one fixed way. A change
    applies to the next batch a worker runs; no restart."""

    list_display = ["term", "target_language", "translation", "note", "updated_at"]
    list_filter = ["target_language"]
    search_fields = ["term", "translation", "note"]
