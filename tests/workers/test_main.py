import os

import pytest

from workers.control import lanes_note
from workers.main import main, parse_args, pin_device, prefetch


class PinDeviceTests:
    @pytest.fixture(autouse=True)
    def restore(self, monkeypatch):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")

    def test_cpu_hides_every_gpu(self):
        assert pin_device("cpu") == "cpu"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""

    @pytest.mark.parametrize(("device", "visible"), [("cuda:1", "1"), ("cuda:GPU-8f6e2a1c", "GPU-8f6e2a1c")])
    def test_a_gpu_is_the_only_one_the_process_sees(self, device, visible):
        assert pin_device(device) == "cuda"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == visible

    def test_anything_else_is_refused(self):
        with pytest.raises(SystemExit, match="--device must be 'cpu' or 'cuda:N'"):
            pin_device("gpu0")


class ParseArgsTests:
    def test_defaults_batch_and_size_the_pool_from_settings(self):
        args = parse_args(["--queues", "translate.en"])
        assert (args.device, args.batching, args.concurrency) == ("cpu", True, 0)
        assert parse_args(["--queues", "all", "--no-batching"]).batching is False

    def test_lanes_and_cores_default_to_the_settings_and_the_machine(self):
        args = parse_args(["--queues", "translate.en"])
        assert (args.lanes, args.cores) == (None, 0)
        args = parse_args(["--queues", "translate.en", "--lanes", "2", "--cores", "4"])
        assert (args.lanes, args.cores) == (2, 4)


    def test_gpu_lanes_beyond_the_cards_limit_are_refused_before_anything_loads(self):
        for lanes in ("9", "0"):
            with pytest.raises(SystemExit, match=f"--lanes on a GPU must be from 1 to 8 .*, not {lanes}"):
                main(["--queues", "translate.en", "--device", "cuda:0", "--lanes", lanes])


class PrefetchTests:
    @pytest.mark.parametrize("lanes", [1, 2, 4])
    def test_every_lane_has_a_full_batch_waiting_while_each_computes_one(self, lanes):
        taken = prefetch(lanes, 128)
        computing = lanes * 128
        assert taken - computing >= lanes * 128  # the lanes that finish together each find one
        assert taken == 2 * lanes * 128 + 16  # and no more: a worker does not hoard its queues

    def test_a_gpu_worker_takes_what_it_took_before(self):
        assert prefetch(1, 128) == 272  # one lane: a batch computing and one gathering, as since the start

    def test_without_batching_one_job_per_lane_and_one_more(self):
        assert prefetch(2, 128, batching=False) == 3


class LanesReportTests:
    def test_how_lanes_hold_a_model_is_said_beside_its_memory(self):
        model = {"model": "m", "memory_mib": 24.0}
        assert lanes_note(dict(model, copies=1, shared_mib=23.0)) == ""
        assert lanes_note(dict(model, copies=2, shared_mib=24.0)) == " in 2 lanes, mapped once from the checkpoint"
        assert lanes_note(dict(model, copies=2, shared_mib=23.0)) == " in 2 lanes, 23.0 MiB of it mapped once from the checkpoint"
        assert lanes_note(dict(model, copies=3, shared_mib=0)) == " in 3 lanes, a copy each"
        assert lanes_note(dict(model, copies=2)) == " in 2 lanes, a copy each"  # a beat from an older worker
