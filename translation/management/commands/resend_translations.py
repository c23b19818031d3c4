from django.core.management.base import CommandError

from cs_portal.commands import DatabaseCommand
from translation.sending import translation_resend_unsent


MAX_OLDER_THAN_S = 365 * 24 * 3600.0


class Command(DatabaseCommand):
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
        if not 0 <= older_than <= MAX_OLDER_THAN_S:  # NaN fails both comparisons
            raise CommandError(f"--older-than must be between 0 and {MAX_OLDER_THAN_S:.0f} seconds (a year).")
        sent = translation_resend_unsent(older_than_s=older_than)
        self.stdout.write(f"{sent} translation(s) sent again.")
