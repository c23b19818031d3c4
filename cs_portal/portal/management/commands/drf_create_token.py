"""``manage.py drf_create_token NAME [--reset]``: DRF's command of that name (this one takes its
place: the portal app comes before ``rest_framework.authtoken`` in INSTALLED_APPS), making keys
the agent API accepts, kept as digests (``portal.tokens``). DRF's own stored the key itself and
printed an existing one again; a key here is shown only when made."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token

from cs_portal.commands import DatabaseCommand
from cs_portal.portal.tokens import agent_token_issue


class Command(DatabaseCommand):
    help = "Make an agent's API token (for the agent API), printed this once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "-r", "--reset", action="store_true", dest="reset_token",
            help="replace the user's token (the old key stops working)",
        )

    def handle(self, *args, username: str, reset_token: bool, **options) -> None:
        users = get_user_model()
        user = users._default_manager.filter(**{users.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"Cannot create the token: user {username!r} does not exist.")
        if Token.objects.filter(user=user).exists() and not reset_token:
            raise CommandError(
                f"User {username!r} has a token already; it cannot be shown again (only its digest is kept). "
                "--reset replaces it (the old key stops working)."
            )
        key = agent_token_issue(user=user)
        self.stdout.write(f"Generated token {key} for user {username} (shown this once).")
