"""The ledger admin's list filters."""

from django.contrib import admin

from translation.languages import LANGUAGES
from translation.models import LanguageRoute


class _KnownValuesFilter(admin.SimpleListFilter):
    """A filter whose options are known without reading the ledger: Django's default for a plain
    text column (``SELECT DISTINCT`` over the whole table) read millions of rows at every page.
    Keeps the default's parameter (``<field>__exact``), so links to filtered lists still work."""

    field = ""

    def __init__(self, request, params, model, model_admin):
        self.parameter_name = f"{self.field}__exact"
        super().__init__(request, params, model, model_admin)

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class _LanguageFilter(_KnownValuesFilter):
    def lookups(self, request, model_admin):
        return [(code, f"{language.name} ({code})") for code, language in LANGUAGES.items()]


class TargetLanguageFilter(_LanguageFilter):
    title, field = "target language", "target_language"


class SourceLanguageFilter(_LanguageFilter):
    title, field = "source language", "source_language"


class QueueFilter(_KnownValuesFilter):
    """The queues the routes name (a handful of rows)."""

    title, field = "queue", "queue"

    def lookups(self, request, model_admin):
        return [(queue, queue) for queue in sorted(set(LanguageRoute.objects.values_list("queue", flat=True)))]
