from django.contrib.auth import get_user_model
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
        parser.add_argument("--password", required=True)
        parser.add_argument("--staff", action="store_true", help="may also sign in to the admin")
        parser.add_argument("--team", default="", help="the agent's team (created if new)")
        parser.add_argument(
            "--reads", default="", metavar="CODES",
            help="languages the agent reads natively, comma-separated (not translated for them)",
        )

    def handle(
        self, *args, username: str, language: str, password: str, staff: bool, team: str, reads: str, **options
    ) -> None:
        if get_user_model().objects.filter(username=username).exists():
            raise CommandError(f"User '{username}' already exists.")
        if len(password) < 8:
            raise CommandError("The password must have at least 8 characters.")
        try:
            with transaction.atomic():  # a new team is kept only with its agent
                agent = agent_create(
                    username=username, password=password, working_language=language, is_staff=staff,
                    team=team_create(name=team) if team.strip() else None,
                    native_languages=[code.strip() for code in reads.split(",") if code.strip()],
                )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"Agent '{agent.user.username}' created, working language {agent.working_language}"
            + (f", team {agent.team}" if agent.team else "")
            + (f", reads {', '.join(agent.native_languages)}" if agent.native_languages else "") + "."
        )
