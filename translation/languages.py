"""Language codes the product knows, and how each model family spells them.

The product speaks ISO 639-1 codes everywhere (API, ledger, routes). Model families name
languages their own way; the tables here translate, so no other module spells a model's code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1
    name: str
    nllb: str  # FLORES-200 code used by NLLB-200
    rtl: bool = False


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language("en", "English", "eng_Latn"),
        Language("zh", "Chinese", "zho_Hans"),
        Language("es", "Spanish", "spa_Latn"),
        Language("fr", "French", "fra_Latn"),
        Language("de", "German", "deu_Latn"),
        Language("pt", "Portuguese", "por_Latn"),
        Language("ja", "Japanese", "jpn_Jpan"),
        Language("ko", "Korean", "kor_Hang"),
        Language("ru", "Russian", "rus_Cyrl"),
        Language("ar", "Arabic", "arb_Arab", rtl=True),
        Language("hi", "Hindi", "hin_Deva"),
        Language("it", "Italian", "ita_Latn"),
        Language("nl", "Dutch", "nld_Latn"),
        Language("pl", "Polish", "pol_Latn"),
        Language("tr", "Turkish", "tur_Latn"),
        Language("uk", "Ukrainian", "ukr_Cyrl"),
        Language("vi", "Vietnamese", "vie_Latn"),
        Language("id", "Indonesian", "ind_Latn"),
        Language("th", "Thai", "tha_Thai"),
        Language("sv", "Swedish", "swe_Latn"),
        Language("he", "Hebrew", "heb_Hebr", rtl=True),
    )
}


def is_known(code: str) -> bool:
    return code in LANGUAGES


def nllb_code(code: str) -> str:
    """The FLORES-200 code NLLB-200 uses for an ISO 639-1 code."""
    return LANGUAGES[code].nllb


def m2m100_code(code: str) -> str:
    """M2M100 uses ISO 639-1 codes as they are (``__es__`` tokens)."""
    return code
