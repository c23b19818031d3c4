"""Several lanes on one GPU: instances of the models on the card, computing side by side."""

import threading

import pytest
import torch

from translation.engines import EngineSpec
from workers.engine_process import Warmup, start_lanes
from workers.lane_layout import lane_layout

NO_GPU = "needs a CUDA device: GPU lanes are instances of the models on a card (none on this machine)"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
class GpuLaneTests:
    def test_two_lanes_on_one_card_translate_side_by_side_each_with_its_copy(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100), precision="fp16", device="cuda")
        count, threads = lane_layout("cuda", 2, cores=4)
        lanes = start_lanes([Warmup(spec, "es", "en")], count=count, threads=threads, device="cuda")
        try:
            texts = ["Hola, mi pedido no ha llegado.", "Gracias. Adiós."] * 32
            outputs: list = [None] * count

            def translate(lane: int) -> None:
                outputs[lane] = [lanes[lane].engine(spec).translate(texts, "es", "fr") for _ in range(5)]

            side_by_side = [threading.Thread(target=translate, args=(lane,)) for lane in range(count)]
            for thread in side_by_side:
                thread.start()
            for thread in side_by_side:
                thread.join(timeout=120)
            # The same model, the same inputs: the same outputs from both instances, every time.
            assert outputs[0] is not None and outputs[0] == outputs[1]
            assert all(len(run) == len(texts) and all(run) for run in outputs[0])
            assert [lane.threads for lane in lanes] == [2, 2]
            # A copy of the weights each, on the card: nothing mapped from the checkpoint is shared.
            memories = [lane.memory[spec] for lane in lanes]
            assert all(memory.total > 0 and memory.shared == 0 for memory in memories)
            assert len({lane.pid for lane in lanes}) == 2
            assert [lane.idle_cores for lane in lanes] == [None, None]  # CPU lanes lend their cores, not these
        finally:
            for lane in lanes:
                lane.stop()
