"""Agents' API tokens (``Authorization: Token <key>`` on the agent API), kept as digests: the
database and the admin's history hold nothing that signs in (backups taken before portal
migration 0009 still hold the keys made before it).

DRF's ``Token`` table stores them; its ``key`` column holds the key's digest, 40 hex characters
as wide as the column. A key is shown once, when it is made (the admin, ``manage.py
drf_create_token``, ``bin/run``'s demo agent); a lost key is replaced, never read back.
"""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


def token_digest(key: str) -> str:
    """What the database keeps of a key. A key is 160 random bits: a fast hash is enough (nothing
    to guess from), unsalted so that a presented key is looked up by its digest."""
    return hashlib.blake2b(key.encode(), digest_size=20).hexdigest()


def token_key_new() -> str:
    return secrets.token_hex(20)  # DRF's own format: 40 hex characters


@transaction.atomic
def agent_token_issue(*, user) -> str:
    """A new key for ``user``, returned this once; the key they had stops working."""
    key = token_key_new()
    Token.objects.filter(user=user).delete()
    Token.objects.create(user=user, key=token_digest(key))
    return key


def agent_token_matches(*, user, key: str) -> bool:
    """Whether ``key`` is the user's current key."""
    return bool(key) and Token.objects.filter(user=user, key=token_digest(key)).exists()


class HashedTokenAuthentication(TokenAuthentication):
    """DRF's token scheme, the presented key looked up by its digest."""

    def authenticate_credentials(self, key):
        return super().authenticate_credentials(token_digest(key))
