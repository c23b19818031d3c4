"""The Translation ledger: every translation job is a row before it is a queue message."""

from __future__ import annotations

import re
import time

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

ANY_LANGUAGE = "*"
ENGINES = ("hf-seq2seq",)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
QUEUE_PATTERN = re.compile(r"^translate\.[a-z]{2}(\.[a-z0-9_-]+)?$")
MAX_BATCH_SIZE_LIMIT = 1024
MAX_WAIT_MS_LIMIT = 1000
MAX_INPUT_CHARS_LIMIT = 100_000
MAX_QUEUED_LIMIT = 10_000_000


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


def queue_name(target_language: str) -> str:
    """The default queue of jobs into ``target_language``: one queue per target language."""
    return f"translate.{target_language}"


class LanguageRoute(models.Model):
    """Which queue, model and knobs serve a language pair; edited in the admin, followed at once.

    A pair may have several enabled routes, one per A/B ``variant``, whose traffic shares add up
    to 100; a conversation always lands on the same variant. A disabled route hands its jobs to
    its fallback. Cross-row rules (one active route per pair and variant, shares adding up, no
    fallback cycles) are checked in ``clean`` and by ``translation.routing.share_problems``.
    """

    source_language = models.CharField(
        max_length=8, default=ANY_LANGUAGE, help_text="ISO 639-1 code, or * for any source language."
    )
    target_language = models.CharField(max_length=8, help_text="ISO 639-1 code.")
    variant = models.CharField(
        max_length=20, blank=True, default="",
        help_text="Empty unless this pair runs an A/B test: then a short name per variant, such as a or b.",
    )
    traffic_share = models.PositiveSmallIntegerField(
        default=100, validators=[MaxValueValidator(100)],
        help_text="Percent of conversations this variant serves; a pair's enabled variants add up to 100.",
    )
    queue = models.CharField(
        max_length=100, blank=True, default="",
        help_text="translate.<lang>[.<name>]; empty: translate.<target language>.",
    )
    engine = models.CharField(max_length=50, default=ENGINES[0], choices=[(e, e) for e in ENGINES])
    model_name = models.CharField(max_length=500, help_text="A local checkpoint folder or a Hugging Face hub id.")
    adapter = models.CharField(max_length=500, blank=True, default="", help_text="Optional LoRA adapter (path or hub id).")
    precision = models.CharField(max_length=10, default="fp32", choices=[(p, p) for p in PRECISIONS])
    max_batch_size = models.PositiveIntegerField(
        default=128, validators=[MinValueValidator(1), MaxValueValidator(MAX_BATCH_SIZE_LIMIT)],
        help_text=f"Jobs per forward pass, 1 to {MAX_BATCH_SIZE_LIMIT} (a worker caps it at its own maximum).",
    )
    max_wait_ms = models.PositiveIntegerField(
        default=5, validators=[MaxValueValidator(MAX_WAIT_MS_LIMIT)],
        help_text=f"How long a batch may wait for more jobs after its first, 0 to {MAX_WAIT_MS_LIMIT} ms.",
    )
    max_input_chars = models.PositiveIntegerField(
        default=5000, validators=[MinValueValidator(1), MaxValueValidator(MAX_INPUT_CHARS_LIMIT)],
        help_text="Longer messages fail at once with the reason instead of reaching the model.",
    )
    max_queued = models.PositiveIntegerField(
        default=10_000, validators=[MinValueValidator(1), MaxValueValidator(MAX_QUEUED_LIMIT)],
        help_text="Jobs that may wait on this route; beyond it its fallback takes them, or the API answers 429.",
    )
    enabled = models.BooleanField(default=True)
    fallback = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="fallback_for",
        help_text="Takes this route's jobs while it is disabled; same target language.",
    )
    note = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source_language", "target_language", "variant"],
                condition=models.Q(enabled=True),
                name="one_active_route_per_pair_and_variant",
            ),
        ]
        ordering = ["target_language", "source_language", "variant"]

    def __str__(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.source_language}→{self.target_language}{variant} (#{self.pk})"

    def save(self, *args, **kwargs) -> None:
        if not self.queue and self.target_language:
            self.queue = queue_name(self.target_language)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from translation.languages import is_known

        errors: dict[str, str] = {}
        if self.source_language != ANY_LANGUAGE and not is_known(self.source_language):
            errors["source_language"] = f"Unknown language code '{self.source_language}': use an ISO 639-1 code such as 'es', or *."
        if not is_known(self.target_language):
            errors["target_language"] = f"Unknown language code '{self.target_language}': use an ISO 639-1 code such as 'en'."
        if self.source_language == self.target_language:
            errors["target_language"] = "The target language must differ from the source language."
        if not self.queue and self.target_language:
            self.queue = queue_name(self.target_language)
        if self.queue and not QUEUE_PATTERN.match(self.queue):
            errors["queue"] = f"Queue '{self.queue}' must look like 'translate.<lang>' or 'translate.<lang>.<name>' (lower case)."
        if self.variant and not re.fullmatch(r"[a-z0-9_-]{1,20}", self.variant):
            errors["variant"] = "A variant name is 1 to 20 lower-case letters, digits, '-' or '_'."
        if self.adapter:
            # Stored for the adapters work; until workers apply adapters, a route naming one would
            # be served by its base model alone, so it is refused rather than silently ignored.
            errors["adapter"] = "LoRA adapters are not served by the workers yet: leave this empty."
        if self.model_name and self.model_name != self.model_name.strip():
            errors["model_name"] = "The model must not start or end with spaces."
        if self.fallback_id is not None:
            problem = self._fallback_problem()
            if problem:
                errors["fallback"] = problem
        if self.pk is not None:
            for referrer in LanguageRoute.objects.filter(fallback=self.pk).exclude(pk=self.pk):
                if not fallback_serves(self, referrer):
                    errors.setdefault(
                        "target_language",
                        f"Route {referrer} falls back to this route, which would then no longer serve "
                        f"{referrer.source_language}→{referrer.target_language}: change its fallback first.",
                    )
        if not errors and self.enabled and not getattr(self, "checked_as_a_set", False):
            twin = LanguageRoute.objects.filter(
                source_language=self.source_language, target_language=self.target_language,
                variant=self.variant, enabled=True,
            ).exclude(pk=self.pk).first()
            if twin is not None:
                errors["variant" if self.variant else "enabled"] = (
                    f"Route {twin} is already the active route for {self.source_language}→{self.target_language}"
                    + (f" variant '{self.variant}'" if self.variant else "")
                    + ": disable it first, or give this route another variant."
                )
        if errors:
            raise ValidationError(errors)

    def _fallback_problem(self) -> str:
        fallback = self.fallback
        if self.pk is not None and fallback.pk == self.pk:
            return "A route cannot be its own fallback."
        if not fallback_serves(fallback, self):
            return (
                f"The fallback {fallback} does not serve {self.source_language}→{self.target_language}: it must "
                "translate into the same language, from the same source language or from any (*)."
            )
        seen = {self.pk}
        step = fallback
        while step is not None:
            if step.pk in seen:
                return f"Fallback cycle: following fallbacks from {fallback} comes back to {step}."
            seen.add(step.pk)
            step = step.fallback
        return ""


def fallback_serves(fallback, route) -> bool:
    """Whether ``fallback`` can take ``route``'s jobs: the same target, and the same source or any.
    Works on LanguageRoute rows and on routing snapshots alike."""
    source = getattr(fallback, "source_language", None) or fallback.source
    target = getattr(fallback, "target_language", None) or fallback.target
    route_source = getattr(route, "source_language", None) or route.source
    route_target = getattr(route, "target_language", None) or route.target
    return target == route_target and source in (route_source, ANY_LANGUAGE)


class RouteTableVersion(models.Model):
    """One row: a number bumped in the same transaction as every change to the routes, so a
    process sees a committed change by reading it (``translation.routing``)."""

    version = models.BigIntegerField(default=0)

    @classmethod
    def bump(cls, **kwargs) -> None:
        if not cls.objects.filter(pk=1).update(version=models.F("version") + 1):
            # The row is gone (the tables emptied, a database restored): it starts again from the
            # clock, in microseconds, not from 0, so that a process holding the table of before
            # never finds the number it read then (it would keep routes whose rows are gone).
            _, created = cls.objects.get_or_create(pk=1, defaults={"version": time.time_ns() // 1000})
            if not created:  # another transaction made it meanwhile: this change still counts
                cls.objects.filter(pk=1).update(version=models.F("version") + 1)


class Translation(models.Model):
    # No index of its own: the unique (message, target_language) constraint's index leads with it.
    # Every index is written at each insert and each claim and store of a row.
    message = models.ForeignKey(
        "portal.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="translations",
        help_text="Empty for a sample sent from the route admin.", db_index=False,
    )
    input_text = models.TextField(
        blank=True, default="",
        help_text="What to translate when it is not the message's text: a route sample, or a back-translation's input.",
    )
    back_translation_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="back_translations",
        help_text="The translation this one translates back (for an agent to check a reply).",
    )
    back_translate = models.BooleanField(
        default=False, help_text="Once done, translate the output back into the source language."
    )
    corrected_text = models.TextField(blank=True, default="", help_text="An agent's correction; the machine output stays in text.")
    corrected_by = models.ForeignKey(
        "portal.AgentProfile", null=True, blank=True, on_delete=models.SET_NULL, related_name="corrections"
    )
    corrected_at = models.DateTimeField(null=True, blank=True)
    source_language = models.CharField(max_length=8)
    target_language = models.CharField(max_length=8)
    status = models.PositiveSmallIntegerField(choices=TranslationStatus.choices, default=TranslationStatus.QUEUED)
    text = models.TextField(blank=True, default="")
    failure_reason = models.TextField(blank=True, default="")

    # What served it: the route's choice at enqueue time, and what the worker reported.
    route = models.ForeignKey(  # indexed through translation_route_recent (route, created_at)
        LanguageRoute, null=True, blank=True, on_delete=models.SET_NULL, related_name="translations",
        help_text="The route chosen when the job was requested (after A/B choice and fallback).", db_index=False,
    )
    variant = models.CharField(max_length=20, blank=True, default="", help_text="The route's A/B variant.")
    queue = models.CharField(max_length=100, blank=True, default="", help_text="Queue the job was sent to.")
    consumed_from = models.CharField(max_length=100, blank=True, default="", help_text="Queue the worker took it from.")
    engine = models.CharField(max_length=50, blank=True, default="")
    model_name = models.CharField(max_length=500, blank=True, default="")
    precision = models.CharField(max_length=10, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    claims = models.PositiveIntegerField(
        default=0, db_default=0, editable=False,  # a process of the release before writes rows too
        help_text=(
            "Times a worker claimed the job: the latest claim's token. Unlike the attempts it is never given back, so a "
            "superseded claim (a batch that never started, a worker taken over) cannot pass for the latest one."
        ),
    )
    resends = models.PositiveIntegerField(
        default=0, help_text="Times the job was sent again: handed over from a dead worker, or lost by the broker."
    )
    runs_alone = models.BooleanField(
        default=False, db_default=False,  # a process of the release before, during a rolling update, writes rows too
        help_text=(
            "A forward pass it shared stopped the engine process (a crash, a hang): it runs in a pass of its own from "
            "then on, so an input that stops the engine fails alone and its neighbours are stored."
        ),
    )
    batch_size = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs in the forward pass that made it.")
    forward_ms = models.FloatField(
        null=True, blank=True,
        help_text=(
            "Milliseconds its group's model call took, timed where the model runs (no load, no hand-over to an engine "
            "process); where a bad input was isolated, the calls that answered, added up."
        ),
    )

    # Latency splits into queue wait (started - enqueued) and compute (finished - started).
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="Handed to the broker; empty if the send failed.")
    started_at = models.DateTimeField(null=True, blank=True)
    retry_at = models.DateTimeField(
        null=True, blank=True, help_text="Queued again after a passing failure: not claimed from the ledger before this.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "target_language"], name="one_translation_per_target"),
            models.CheckConstraint(
                condition=models.Q(message__isnull=False) | ~models.Q(input_text=""), name="a_message_or_a_sample"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["route", "created_at"], name="translation_route_recent"),  # per-route figures
            models.Index(fields=["finished_at"], name="translation_finished"),  # the operations page's hour
            # Backpressure counts a route's waiting jobs: only those rows are in this index.
            models.Index(fields=["route"], condition=models.Q(status=1), name="translation_queued_by_route"),
            # Ledger dispatch claims a queue's waiting jobs, oldest first (translations_claim_queued).
            models.Index(fields=["queue", "id"], condition=models.Q(status=1), name="translation_queued_by_queue"),
            # The reconciler's look for jobs never sent (the broker was down at their commit): a
            # row is stamped as sent when saved, so this index is empty but for those, and no
            # insert, claim or store writes it; without it each look walked every queued row.
            models.Index(
                fields=["created_at"], condition=models.Q(status=1, enqueued_at__isnull=True), name="translation_never_sent"
            ),
            # The reconciler's look for retried jobs (``translation_requeue``: a message sent again
            # when the row went back to queued, ``updated_at``): empty but for rows waiting for a
            # retry, and written only when a row goes back to queued for one.
            models.Index(
                fields=["queue", "updated_at"], condition=models.Q(status=1, retry_at__isnull=False),
                name="translation_retried",
            ),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.source_language}->{self.target_language} {self.get_status_display()}"

    @property
    def source_text(self) -> str:
        if self.input_text:
            return self.input_text
        return self.message.text if self.message_id else ""

    @property
    def final_text(self) -> str:
        """What a reader is shown: the agent's correction when there is one, else the model's."""
        return self.corrected_text or self.text

    @property
    def is_sample(self) -> bool:
        return self.message_id is None and self.back_translation_of_id is None

    @property
    def latency_seconds(self) -> float | None:
        """From the request to the stored result: what the person waiting saw."""
        if self.created_at and self.finished_at:
            return (self.finished_at - self.created_at).total_seconds()
        return None

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

