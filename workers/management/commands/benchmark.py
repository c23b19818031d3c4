from django.core.management.base import CommandError

from cs_portal.commands import DatabaseCommand, migrations_unapplied
from translation.tiny_models import BENCHMARK_SHAPES
from workers.benchmark import SATURATION_ROUNDS, Benchmark
from workers.lane_layout import MAX_GPU_LANES


class Command(DatabaseCommand):
    help = (
        "Measure the serving pipeline against the raw batched model (the limit) and against "
        "one job per forward pass (the baseline). Needs the broker and database of the settings."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--model", choices=sorted(BENCHMARK_SHAPES), default="small")
        parser.add_argument("--jobs", type=int, default=512, help="jobs in each saturation burst (default 512)")
        parser.add_argument(
            "--rounds", type=int, default=SATURATION_ROUNDS,
            help=f"saturation bursts, each between two rounds of the raw model; the figures are the round's whose "
                 f"ratio to its limit is the median (default {SATURATION_ROUNDS})",
        )
        parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs (cuda: the first GPU)")
        parser.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default="fp32")
        parser.add_argument(
            "--lanes", type=int, default=None,
            help="lanes of the worker and of the raw model: on a CPU engine processes with a share of the cores "
                 "(default $TRANSLATION_CPU_LANES; 0: one per core); on a GPU instances of the model on the card, "
                 f"1 to {MAX_GPU_LANES} (default $TRANSLATION_GPU_LANES)",
        )

        parser.add_argument(
            "--dispatch", choices=["jobs", "ledger"], default=None,
            help="how jobs reach the worker: a message each, or claimed from the ledger in batches "
                 "(default $TRANSLATION_DISPATCH)",
        )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def handle(self, *args, model: str, jobs: int, rounds: int, device: str, precision: str, lanes: int | None,
               dispatch: str | None, **options) -> None:
        if not 1 <= jobs <= 100_000:
            raise CommandError("--jobs must be between 1 and 100000.")
        if not 1 <= rounds <= 9:
            raise CommandError("--rounds must be between 1 and 9.")
        if lanes is not None and not 0 <= lanes <= 64:
            raise CommandError("--lanes must be between 0 (one per core) and 64.")
        if lanes is not None and device == "cuda" and not 1 <= lanes <= MAX_GPU_LANES:
            raise CommandError(f"--lanes on cuda must be from 1 to {MAX_GPU_LANES} (instances of the model on the card).")
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise CommandError("--device cuda: no CUDA device on this machine.")
        if (precision in ("fp16", "bf16")) != (device == "cuda") and precision != "fp32":
            raise CommandError(f"--precision {precision} does not run on {device} (fp16/bf16: cuda; int8: cpu).")
        unapplied = migrations_unapplied()  # before minutes of measuring: the pipelines write their jobs there
        if unapplied:
            raise CommandError(f"The database lacks {len(unapplied)} migration(s) (the first: {unapplied[0]}): run "
                               "`manage.py migrate` with the same DATABASE_URL first.")
        benchmark = Benchmark(model=model, jobs=jobs, say=self.say, device=device, precision=precision, lanes=lanes,
                              dispatch=dispatch, rounds=rounds)
        try:
            figures = benchmark.run()
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        self.say(
            f"\nSummary ({model} model, {precision} on {device}{benchmark.layout}, {benchmark.dispatch} dispatch, "
            f"bursts of {jobs} jobs):\n"
            f"  rounds (burst / the better raw round beside it)   "
            + ", ".join(f"{r.pipeline:.1f} / {r.limit:.1f} = {r.ratio:.3f}" for r in figures.rounds) + "\n"
            f"  limit (raw batched model)   {figures.limit:8.1f} sent/s   beside the median round's burst\n"
            f"  pipeline (batched)          {figures.pipeline:8.1f} sent/s   {figures.pipeline / figures.limit:6.1%} of the limit\n"
            f"  pipeline (one per pass)     {figures.batch1:8.1f} sent/s   pipeline is {figures.pipeline / figures.batch1:.1f}x this\n"
            f"  mean batch size             {figures.mean_batch:8.1f}\n"
            + (f"  model's share of the cores  {figures.model_share:8.1%}   over the burst (the host's drift does not move it)\n"
               if figures.model_share else "")
            + f"  light load p50/p95/p99      {figures.light[0]:.1f} / {figures.light[1]:.1f} / {figures.light[2]:.1f} ms"
            f"   (one forward pass alone at that pace: {figures.model_ms:.1f} ms, p95 {figures.model_ms_p95:.1f} ms; back to back: "
            f"{figures.model_ms_back_to_back:.1f} ms)\n"
            f"    beyond each job's own model call, p50/p95   {figures.light_beyond_model[0]:.1f} / {figures.light_beyond_model[1]:.1f} ms"
            "   (what the pipeline adds, timed in the same run as the model)\n"
            f"  saturation p50/p95/p99      {figures.saturated[0]:.0f} / {figures.saturated[1]:.0f} / {figures.saturated[2]:.0f} ms"
        )
        self.say(figures.last_line())
