from django.core.management.base import BaseCommand, CommandError

from translation.sending import translation_resend_unsent


class Command(BaseCommand):
    help = (
        "Send again the queued translations that never reached a queue (the broker was down when "
        "their message was saved). Safe to run at any time, e.g. every minute from cron."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--older-than", type=float, default=30.0, metavar="SECONDS",
            help="only rows created at least this long ago (default 30), so a commit in progress is left alone",
        )

    def handle(self, *args, older_than: float, **options) -> None:
        if older_than < 0:
            raise CommandError("--older-than must be zero or more seconds.")
        sent = translation_resend_unsent(older_than_s=older_than)
        self.stdout.write(f"{sent} translation(s) sent again.")
