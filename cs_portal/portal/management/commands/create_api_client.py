from django.core.management.base import CommandError

from cs_portal.commands import DatabaseCommand
from cs_portal.portal.models import ApiClient
from cs_portal.portal.services import api_client_create


class Command(DatabaseCommand):
    help = "Create an API client of the customer channel and print its key (shown only once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="a unique name, e.g. 'web-widget'")

    def handle(self, *args, name: str, **options) -> None:
        name = name.strip()
        if not name:
            raise CommandError("The client name is empty.")
        if ApiClient.objects.filter(name=name).exists():
            raise CommandError(f"An API client named '{name}' already exists; revoke it in the admin or pick another name.")
        client, key = api_client_create(name=name)
        self.stdout.write(f"API client '{client.name}' created. Its key (shown once):\n{key}")
