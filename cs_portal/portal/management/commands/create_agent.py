import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from cs_portal.commands import DatabaseCommand
from cs_portal.portal.services import agent_create, team_create
from translation.errors import ApplicationError


class Command(DatabaseCommand):
    help = "Create a support agent with a working language (the language their translations arrive in)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--language", required=True, help="the agent's working language (ISO 639-1)")
        parser.add_argument(
            "--password", default=None,
            help="the agent's password; without it, AGENT_PASSWORD or, on a terminal, a prompt (kept out of the "
                 "process list and the shell's history)",
        )
        parser.add_argument("--staff", action="store_true", help="may also sign in to the admin")
        parser.add_argument(
            "--every-team", action="store_true",
            help="sees every team's conversations, not only their own team's (a supervisor)",
        )
        parser.add_argument("--team", default="", help="the agent's team (created if new)")
        parser.add_argument(
            "--reads", default="", metavar="CODES",
            help="languages the agent reads natively, comma-separated (not translated for them)",
        )

    def handle(
        self, *args, username: str, language: str, password: str | None, staff: bool, every_team: bool, team: str,
        reads: str, **options
    ) -> None:
        users = get_user_model()
        if users.objects.filter(username=username).exists():
            raise CommandError(f"User '{username}' already exists.")
        password = password if password is not None else _password_asked()
        try:  # the checks the admin's forms make (AUTH_PASSWORD_VALIDATORS)
            validate_password(password, user=users(username=username))
        except ValidationError as exc:
            raise CommandError("The password was refused: " + " ".join(exc.messages)) from exc
        try:
            with transaction.atomic():  # a new team is kept only with its agent
                agent = agent_create(
                    username=username, password=password, working_language=language, is_staff=staff,
                    team=team_create(name=team) if team.strip() else None,
                    native_languages=[code.strip() for code in reads.split(",") if code.strip()],
                    every_team=every_team,
                )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"Agent '{agent.user.username}' created, working language {agent.working_language}"
            + (f", team {agent.team}" if agent.team else "")
            + (f", reads {', '.join(agent.native_languages)}" if agent.native_languages else "")
            + (", sees every team's conversations" if every_team else "") + "."
        )


def _password_asked() -> str:
    """The password from AGENT_PASSWORD, or typed twice at a terminal."""
    if os.environ.get("AGENT_PASSWORD"):
        return os.environ["AGENT_PASSWORD"]
    if not sys.stdin.isatty():
        raise CommandError("Give the password: --password, the AGENT_PASSWORD variable, or run it on a terminal.")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != password:
        raise CommandError("The two passwords differ; nothing was created.")
    return password
