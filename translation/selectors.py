"""Reads of the translation app."""

from __future__ import annotations

from translation.models import GlossaryTerm


def glossary_for(target_language: str) -> dict[str, str]:
    """The glossary a translation into ``target_language`` applies: term -> forced translation
    ("" keeps the term). An entry for the language wins over one for every language.

    Read for every batch (one small query): an admin's change applies to the next batch.
    """
    glossary: dict[str, str] = {}
    entries = GlossaryTerm.objects.filter(target_language__in=["", target_language]).order_by("-target_language")
    for term, translation in entries.values_list("term", "translation"):
        glossary.setdefault(term, translation)  # language entries sort before "" (all languages)
    return glossary
