import json

import pytest

from workers.placement import Placement, PlacementError, for_this_machine, load_placement, parse_placement

PLAN = {
    "workers": [
        {"name": "gpu0", "device": "cuda:0", "queues": ["translate.en", "translate.es"]},
        {"name": "gpu1", "device": "cuda:1", "queues": ["translate.en", "translate.zh"]},
    ]
}


class ParsePlacementTests:
    def test_a_language_may_be_served_by_several_gpus(self):
        plan = parse_placement(PLAN)
        assert [p.device for p in plan if "translate.en" in p.queues] == ["cuda:0", "cuda:1"]

    @pytest.mark.parametrize(
        ("workers", "message"),
        [
            ([], "at least one worker"),
            ([{"name": "GPU 0", "device": "cuda:0", "queues": ["translate.en"]}], "name 'GPU 0' must be"),
            ([{"name": "g", "device": "gpu0", "queues": ["translate.en"]}], "device 'gpu0' must be"),
            ([{"name": "g", "device": "cuda:0", "queues": []}], "queues must be a non-empty list"),
            ([{"name": "g", "device": "cuda:0", "queues": ["english"]}], "queue 'english' must look like"),
            ([{"name": "g", "device": "cuda:0", "queues": ["translate.en"], "gpus": 2}], "unknown keys ['gpus']"),
            (
                [{"name": "a", "device": "cuda:0", "queues": ["translate.en"]}, {"name": "b", "device": "cuda:0", "queues": ["translate.es"]}],
                "cuda:0 already has a worker",
            ),
            (
                [{"name": "a", "device": "cuda:0", "queues": ["translate.en"]}, {"name": "a", "device": "cuda:1", "queues": ["translate.es"]}],
                "a second worker named 'a'",
            ),
            ([{"name": "g", "device": "cuda:0", "queues": ["translate.en"], "metrics_port": 80}], "metrics_port 80 must be"),
            ([{"name": "g", "device": "cuda:0", "queues": ["translate.en"], "lanes": 0}],
             "worker 1: lanes 0 must be from 1 to 8 (instances of its models on the card)"),
            ([{"name": "g", "device": "cuda:0", "queues": ["translate.en"], "lanes": 9}], "lanes 9 must be from 1 to 8"),
            ([{"name": "g", "device": "cuda:0", "queues": ["translate.en"], "lanes": "2"}], "lanes '2' must be from 1 to 8"),
            ([{"name": "g", "device": "cuda:0", "queues": ["translate.en"], "lanes": True}], "lanes True must be from 1"),
            ([{"name": "g", "device": "cpu", "queues": ["translate.en"], "lanes": -1}],
             "lanes -1 must be from 0 to 64 (CPU lanes (0: one per core))"),
            (
                [{"name": "a", "device": "cuda:0", "queues": ["translate.en"], "metrics_port": 9300},
                 {"name": "b", "device": "cuda:1", "queues": ["translate.es"], "metrics_port": 9300}],
                "metrics_port 9300 is already another worker's",
            ),
        ],
    )
    def test_bad_plans_are_refused_with_the_entry_and_the_reason(self, workers, message):
        with pytest.raises(PlacementError) as raised:
            parse_placement({"workers": workers})
        assert message in str(raised.value)

    def test_each_worker_gets_a_metrics_port_of_its_own(self):
        assert [p.metrics_port for p in parse_placement(PLAN)] == [9200, 9201]
        [placement] = parse_placement({"workers": [{"name": "a", "device": "cpu", "queues": ["translate.en"], "metrics_port": 9400}]})
        assert placement.metrics_port == 9400

    def test_a_gpu_may_run_several_instances_of_its_models(self):
        plan = parse_placement({"workers": [
            {"name": "gpu0", "device": "cuda:0", "queues": ["translate.en"], "lanes": 3},
            {"name": "gpu1", "device": "cuda:1", "queues": ["translate.es"]},
        ]})
        assert [p.lanes for p in plan] == [3, None]  # None: the worker's setting
        assert plan[0].worker_arguments(host="h1", cores=8) == [
            "--device", "cuda:0", "--queues", "translate.en", "--name", "gpu0@h1", "--metrics-port=9200", "--lanes=3",
            "--cores=8",
        ]
        assert plan[1].worker_arguments(host="h1") == [
            "--device", "cuda:1", "--queues", "translate.es", "--name", "gpu1@h1", "--metrics-port=9201",
        ]

    def test_without_a_gpu_the_cpu_worker_keeps_its_own_lanes(self):
        plan = parse_placement({"workers": [{"name": "gpu0", "device": "cuda:0", "queues": ["translate.en"], "lanes": 4}]})
        [cpu] = for_this_machine(plan, gpu_count=0)
        assert (cpu.device, cpu.lanes) == ("cpu", None)
        assert "--lanes" not in " ".join(cpu.worker_arguments(host="h"))

    def test_gpu_uuids_are_accepted(self):
        [placement] = parse_placement({"workers": [{"name": "a", "device": "cuda:GPU-8f6e2a1c-1d2e", "queues": ["translate.en"]}]})
        assert placement.device == "cuda:GPU-8f6e2a1c-1d2e"


class ForThisMachineTests:
    def test_without_a_gpu_one_cpu_worker_takes_every_queue_once(self):
        [worker] = for_this_machine(parse_placement(PLAN), gpu_count=0)
        assert worker == Placement(name="cpu", device="cpu", queues=("translate.en", "translate.es", "translate.zh"))

    def test_a_plan_wanting_more_gpus_than_present_is_refused(self):
        with pytest.raises(PlacementError, match="wants cuda:1, but this machine has 1 GPU"):
            for_this_machine(parse_placement(PLAN), gpu_count=1)


class LoadPlacementTests:
    def test_the_shipped_plan_is_valid(self):
        from django.conf import settings

        assert len(load_placement(settings.PLACEMENT_FILE)) >= 2

    def test_malformed_json_is_named(self, tmp_path):
        path = tmp_path / "plan.json"
        path.write_text('{"workers": [')
        with pytest.raises(PlacementError, match="is not valid JSON"):
            load_placement(path)

    def test_round_trip(self, tmp_path):
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(PLAN))
        assert [p.name for p in load_placement(path)] == ["gpu0", "gpu1"]


class StartWorkersPortTests:
    def test_a_metrics_port_in_use_is_named_before_any_worker_starts(self, tmp_path):
        import socket

        from django.core.management import CommandError, call_command

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            plan = tmp_path / "plan.json"
            plan.write_text(json.dumps({"workers": [{"name": "gpu0", "device": "cuda:0", "queues": ["translate.en"],
                                                     "metrics_port": port}]}))
            with pytest.raises(CommandError, match=f"cpu's metrics port {port} is in use by another process"):
                call_command("start_workers", plan=str(plan), cpu=True)
