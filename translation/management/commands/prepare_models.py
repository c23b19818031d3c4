from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from translation.tiny_models import write_tiny_models


class Command(BaseCommand):
    help = (
        "Write the tiny test checkpoints (random weights: their output is not a translation) "
        "to MODELS_DIR, where the embedded routes point."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dir", default=str(settings.MODELS_DIR), help="target directory (default: MODELS_DIR)")
        parser.add_argument("--force", action="store_true", help="rewrite even if present")

    def handle(self, *args, dir: str, force: bool, **options) -> None:
        models = write_tiny_models(Path(dir), force=force, progress=self.stdout.write)
        self.stdout.write(self.style.SUCCESS(f"Tiny models ready: {models.marian_es_en}, {models.m2m100}"))
