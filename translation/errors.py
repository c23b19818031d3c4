"""The application error type of translation and the portal, and its named kinds.

Messages are module constants so tests assert them exactly; each says what happened and in
which state.
"""

from __future__ import annotations


class ApplicationError(Exception):
    """An error a user or operator can act on; ``code`` is stable, ``message`` is for people."""

    code = "invalid"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra or {}


class NotFound(ApplicationError):
    code = "not_found"
    status = 404


class NoRoute(ApplicationError):
    code = "no_route"


class Overloaded(ApplicationError):
    """A route holds as many waiting jobs as it may: try again after ``retry_after`` seconds."""

    code = "overloaded"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, extra={"retry_after": retry_after})
        self.retry_after = retry_after


TEXT_EMPTY = "Message text is empty."
TEXT_TOO_LONG = "Message text has {length} characters; the limit is {limit}."
TEXT_NUL = "Message text contains a NUL character (U+0000), which cannot be stored; remove it and send again."
LANGUAGE_UNKNOWN = "Unknown language code '{code}': use an ISO 639-1 code such as 'es'."
LANGUAGE_UNSUPPORTED = "Language '{code}' is not supported here. Supported: {supported}."
LANGUAGE_UNDETECTED = "Could not detect the language of the text; send 'language' with the message."
CONVERSATION_NOT_FOUND = "Conversation {id} does not exist."
CONVERSATION_CLOSED = "Conversation {id} is closed; open a new one."
NO_ROUTE = "No enabled route translates {source} into {target}."
OVERLOADED = (
    "Translation into {target} is at capacity: {queued} jobs wait on route {route} (its limit is {limit}). "
    "Nothing was stored; send again in {retry_after} s."
)
