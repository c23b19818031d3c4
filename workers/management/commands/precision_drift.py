from contextlib import nullcontext

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from translation.engines import EngineError
from translation.engines.hf_seq2seq import fixed_output_tokens
from translation.tiny_models import BENCHMARK_SHAPES, write_benchmark_model
from workers.benchmark import FIXED_OUTPUT_TOKENS, spanish_texts
from workers.precision import measure_drift


class Command(BaseCommand):
    help = "Measure how far each precision (int8 on CPU; fp16, bf16 on GPU) drifts from fp32 on the same inputs."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--model", default="small", help=f"one of {sorted(BENCHMARK_SHAPES)}, or a checkpoint path or hub id")
        parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
        parser.add_argument("--source", default="es")
        parser.add_argument("--target", default="en")

    def handle(self, *args, model: str, device: str, source: str, target: str, **options) -> None:
        if device not in ("cpu", "cuda"):
            raise CommandError("--device must be 'cpu' or 'cuda'.")
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise CommandError("No CUDA device here; fp16 and bf16 are measured on a GPU machine.")
        forced = nullcontext()
        if model in BENCHMARK_SHAPES:
            # Random weights: force the output length, as the benchmark does.
            forced = fixed_output_tokens(FIXED_OUTPUT_TOKENS)
            model = str(write_benchmark_model(settings.MODELS_DIR, model, progress=self.stdout.write))
        texts = spanish_texts() * 4
        self.stdout.write(f"Translating {len(texts)} sentences {source}->{target} with {model}:")
        with forced:
            try:
                fp32_memory, drifts = measure_drift(model, texts, device=device, source=source, target=target,
                                                    say=self.stdout.write)
            except (OSError, ValueError, EngineError) as exc:  # not on this host, not a checkpoint, not this pair
                raise CommandError(f"Cannot measure {model} {source}->{target}: {type(exc).__name__}: {exc}") from exc
        self.stdout.write(f"\n{'precision':<10}{'identical to fp32':>20}{'chrF vs fp32':>15}{'weights MiB':>14}")
        self.stdout.write(f"{'fp32':<10}{'100.0%':>20}{'100.0':>15}{fp32_memory:>14.1f}")
        for drift in drifts:
            self.stdout.write(f"{drift.precision:<10}{drift.identical:>20.1%}{drift.chrf:>15.1f}{drift.memory_mib:>14.1f}")
