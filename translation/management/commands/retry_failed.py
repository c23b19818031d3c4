from datetime import timedelta

from django.core.management.base import CommandError
from django.utils import timezone

from cs_portal.commands import DatabaseCommand
from translation.languages import LANGUAGES
from translation.models import Translation, TranslationStatus
from translation.services import Retried, translations_retry

MAX_SINCE_MIN = 30 * 24 * 60


class Command(DatabaseCommand):
    help = (
        "Send failed translations again along their current routes (after an outage, say): those that "
        "failed within --since minutes, narrowed by target language, queue or reason; oldest first."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", type=float, default=60.0, metavar="MINUTES",
                            help="only those that failed within this many minutes (default 60)")
        parser.add_argument("--target", default="", metavar="CODE", help="only those into this language")
        parser.add_argument("--queue", default="", help="only those of this queue")
        parser.add_argument("--reason", default="", metavar="TEXT", help="only those whose failure reason contains it")
        parser.add_argument("--limit", type=int, default=10_000, help="at most this many (default 10000)")
        parser.add_argument("--dry-run", action="store_true", help="say how many match, send none")

    def handle(self, *args, since: float, target: str, queue: str, reason: str, limit: int, dry_run: bool,
               **options) -> None:
        if not 0 < since <= MAX_SINCE_MIN:  # NaN fails both comparisons
            raise CommandError(f"--since must be more than 0 and at most {MAX_SINCE_MIN} minutes (30 days).")
        if not 1 <= limit <= 1_000_000:
            raise CommandError("--limit must be between 1 and 1000000.")
        if target and target not in LANGUAGES:
            raise CommandError(f"--target {target!r} is not a language code this portal knows.")
        rows = Translation.objects.filter(finished_at__gte=timezone.now() - timedelta(minutes=since))
        if target:
            rows = rows.filter(target_language=target)
        if queue:
            rows = rows.filter(queue=queue)
        if reason:
            rows = rows.filter(failure_reason__contains=reason)
        if dry_run:
            self.stdout.write(f"{rows.filter(status=TranslationStatus.FAILED).count()} failed translation(s) match; "
                              "none sent (--dry-run).")
            return
        done = translations_retry(rows, limit=limit, progress=self._progress)
        for why, count in sorted(done.refused.items()):
            self.stdout.write(f"  {count} not retried: {why}")
        self.stdout.write(f"{done.sent} translation(s) sent again, {sum(done.refused.values())} refused"
                          + (f", {done.left} more left (--limit {limit})." if done.left else "."))

    def _progress(self, done: Retried) -> None:
        self.stdout.write(f"  ... {done.sent} sent again so far")
        self.stdout.flush()
