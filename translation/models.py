"""The Translation ledger: every translation job is a row before it is a queue message."""

from __future__ import annotations

from django.db import models


class TranslationStatus(models.IntegerChoices):
    """Ordered: every status from DONE on is final (see ``is_finished``)."""

    QUEUED = 1, "queued"
    RUNNING = 2, "running"
    DONE = 3, "done"
    FAILED = 4, "failed"

    @classmethod
    def is_finished(cls, status: int) -> bool:
        return status >= cls.DONE


class GlossaryTerm(models.Model):
    """A term the engine must not translate freely: kept as it is (brand and product names), or
    given a forced translation, for one target language or all of them."""

    term = models.CharField(max_length=100, help_text="Matched as a whole word, case-sensitively.")
    target_language = models.CharField(
        max_length=8, blank=True, default="", help_text="Empty: every target language."
    )
    translation = models.CharField(
        max_length=200, blank=True, default="", help_text="Empty: the term stays as it is."
    )
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["term", "target_language"], name="one_entry_per_term_and_target")]
        ordering = ["term", "target_language"]

    def __str__(self) -> str:
        return f"{self.term} -> {self.translation or self.term} ({self.target_language or 'all'})"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from translation.languages import is_known

        if not self.term.strip() or self.term != self.term.strip():
            raise ValidationError({"term": "A term must not be empty or start or end with spaces."})
        if self.target_language and not is_known(self.target_language):
            raise ValidationError({"target_language": f"Unknown language code '{self.target_language}'."})


class Translation(models.Model):
    message = models.ForeignKey("portal.Message", on_delete=models.CASCADE, related_name="translations")
    source_language = models.CharField(max_length=8)
    target_language = models.CharField(max_length=8)
    status = models.PositiveSmallIntegerField(choices=TranslationStatus.choices, default=TranslationStatus.QUEUED)
    text = models.TextField(blank=True, default="")
    failure_reason = models.TextField(blank=True, default="")

    # What served it: the route's choice at enqueue time, and what the worker reported.
    queue = models.CharField(max_length=100, blank=True, default="", help_text="Queue the job was sent to.")
    consumed_from = models.CharField(max_length=100, blank=True, default="", help_text="Queue the worker took it from.")
    engine = models.CharField(max_length=50, blank=True, default="")
    model_name = models.CharField(max_length=500, blank=True, default="")
    precision = models.CharField(max_length=10, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    batch_size = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs in the forward pass that made it.")

    # Latency splits into queue wait (started - enqueued) and compute (finished - started).
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="Handed to the broker; empty if the send failed.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "target_language"], name="one_translation_per_target"),
        ]
        indexes = [models.Index(fields=["status", "created_at"])]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.source_language}->{self.target_language} {self.get_status_display()}"

    @property
    def forward_pass_key(self) -> str:
        """What must be equal for jobs to share a forward pass: model, precision, language pair."""
        return f"{self.engine}|{self.model_name}|{self.precision}|{self.source_language}|{self.target_language}"

    @property
    def is_finished(self) -> bool:
        return TranslationStatus.is_finished(self.status)

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.enqueued_at and self.started_at:
            return (self.started_at - self.enqueued_at).total_seconds()
        return None

    @property
    def compute_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

