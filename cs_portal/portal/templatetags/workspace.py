from django import template

from translation.languages import LANGUAGES

register = template.Library()


@register.inclusion_tag("workspace/_text.html")
def text_block(text: str, code: str) -> dict:
    """A text in its language: ``lang`` for the right fonts (CJK), right-to-left for Arabic and
    Hebrew, ``auto`` otherwise. Escaped like every other template value."""
    language = LANGUAGES.get(code)
    return {"text": text, "code": code, "rtl": bool(language and language.rtl)}
