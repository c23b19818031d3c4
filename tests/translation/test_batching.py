"""The batcher as plain Python, on a clock the tests move by hand."""

import threading

import pytest

from translation.batching import Batcher, BatchPolicy, PendingJob, run_isolated


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(key="es-en", payload=None, text="hola", tokens=0) -> PendingJob:
    return PendingJob(key=key, payload=payload, text=text, tokens=tokens)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def batcher(clock, **policy) -> Batcher:
    return Batcher(BatchPolicy(**{"max_batch_size": 4, "max_wait_s": 0.005, **policy}), clock=clock)


class FlushTests:
    def test_a_full_batch_leaves_at_once(self, clock):
        b = batcher(clock)
        for i in range(5):
            b.submit(job(payload=i))
        assert [j.payload for j in b.next_batch(timeout=0)] == [0, 1, 2, 3]
        assert b.pending() == 1

    def test_jobs_submitted_together_batch_as_if_one_by_one(self, clock):
        b = batcher(clock)
        b.submit_all([job(payload=i) for i in range(5)] + [job(key="fr-en", payload="fr")])
        assert [j.payload for j in b.next_batch(timeout=0)] == [0, 1, 2, 3]
        assert b.next_batch(timeout=0) == []  # the rest wait for their deadline, together
        clock.now += 0.005
        assert sorted(map(str, (j.payload for j in b.next_batch(timeout=0) + b.next_batch(timeout=0)))) == ["4", "fr"]

    def test_a_closed_batcher_takes_nothing(self, clock):
        b = batcher(clock)
        b.close()
        with pytest.raises(RuntimeError, match="closed"):
            b.submit_all([job()])

    def test_a_partial_batch_waits_for_its_oldest_jobs_deadline(self, clock):
        b = batcher(clock)
        b.submit(job(payload="first"))
        clock.now += 0.003
        b.submit(job(payload="second"))
        assert b.next_batch(timeout=0) == []  # 3 ms: the first job may still wait 2 ms
        clock.now += 0.002
        assert [j.payload for j in b.next_batch(timeout=0)] == ["first", "second"]

    def test_a_job_that_waited_before_it_came_counts_that_wait(self, clock):
        # Ledger dispatch: a claimed job waited in the ledger; its deadline counts from there.
        b = batcher(clock)
        b.submit(PendingJob(key="es-en", payload="claimed", text="hola", waited=0.003))
        assert b.next_batch(timeout=0) == []  # 2 ms of its 5 are left
        clock.now += 0.002
        assert [j.payload for j in b.next_batch(timeout=0)] == ["claimed"]
        b.submit(PendingJob(key="es-en", payload="waited long", text="hola", waited=0.2))
        assert [j.payload for j in b.next_batch(timeout=0)] == ["waited long"]  # due at once

    def test_a_long_wait_counts_no_more_than_the_policys_wait(self, clock):
        # Another host's clock may be ahead: a job may not jump more than one wait ahead.
        b = batcher(clock)
        b.submit(job(key="fr-en", payload="fr"))
        clock.now += 0.011  # fr is 6 ms past its deadline, waiting for a free lane
        b.submit(PendingJob(key="es-en", payload="es", text="hola", waited=3600))
        # es counts 5 ms of its hour: younger than fr, which goes first.
        assert [j.payload for j in b.next_batch(timeout=0)] == ["fr"]
        assert [j.payload for j in b.next_batch(timeout=0)] == ["es"]

    def test_a_job_that_waited_keeps_its_deadline_when_newer_jobs_ahead_of_it_are_taken(self, clock):
        b = batcher(clock)  # batches of 4
        b.submit_all([job(payload=i) for i in range(5)])
        b.submit(PendingJob(key="es-en", payload="waited", text="hola", waited=0.005))
        assert [j.payload for j in b.next_batch(timeout=0)] == [0, 1, 2, 3]  # full
        assert [j.payload for j in b.next_batch(timeout=0)] == [4, "waited"]  # due: its wait is over

    def test_a_job_that_waited_brings_its_groups_deadline_forward(self, clock):
        b = batcher(clock)
        b.submit(job(payload="fresh"))
        b.submit(PendingJob(key="es-en", payload="waited", text="hola", waited=0.004))
        clock.now += 0.001
        assert [j.payload for j in b.next_batch(timeout=0)] == ["fresh", "waited"]

    def test_a_handed_over_job_goes_into_the_next_batch_without_delaying_it(self, clock):
        b = batcher(clock)
        for i in range(6):
            b.submit(job(payload=i))
        clock.now += 0.003
        b.submit(PendingJob(key="es-en", payload="handed over", text="hola", urgent=True))
        assert [j.payload for j in b.next_batch(timeout=0)] == ["handed over", 0, 1, 2]
        b.submit(PendingJob(key="es-en", payload="late", text="hola", urgent=True))
        # The group keeps its oldest job's deadline: 2 ms later its rest leaves, the late one first.
        clock.now += 0.002
        assert [j.payload for j in b.next_batch(timeout=0)] == ["late", 3, 4, 5]

    def test_the_token_budget_releases_a_batch_before_it_is_full(self, clock):
        b = batcher(clock, max_batch_tokens=100)
        b.submit(job(payload="a", tokens=60))
        b.submit(job(payload="b", tokens=60))
        # Over budget: release now, and only what fits.
        assert [j.payload for j in b.next_batch(timeout=0)] == ["a"]
        assert b.pending() == 1

    def test_a_lone_job_larger_than_the_budget_still_runs(self, clock):
        b = batcher(clock, max_batch_tokens=10)
        b.submit(job(payload="long", tokens=50))
        assert [j.payload for j in b.next_batch(timeout=0)] == ["long"]

    def test_redelivered_jobs_never_make_a_batch_larger_than_the_limit(self, clock):
        b = batcher(clock)
        for i in range(4 * 3):  # a burst, as after a redelivery sweep
            b.submit(job(payload=i))
        sizes = [len(b.next_batch(timeout=0)) for _ in range(3)]
        assert sizes == [4, 4, 4]

    def test_next_batch_blocks_until_a_deadline_passes_in_real_time(self):
        b = Batcher(BatchPolicy(max_batch_size=100, max_wait_s=0.01))
        b.submit(job(payload="x"))
        assert [j.payload for j in b.next_batch(timeout=2)] == ["x"]

    def test_close_answers_every_waiting_job_with_the_error(self, clock):
        b = batcher(clock)
        futures = [b.submit(job(payload=i)) for i in range(3)]
        b.close(ConnectionError("engine gone"))
        for future in futures:
            with pytest.raises(ConnectionError, match="engine gone"):
                future.result(timeout=0)
        assert b.pending() == 0

    def test_close_releases_a_waiting_consumer(self):
        b = Batcher(BatchPolicy())
        got = []
        consumer = threading.Thread(target=lambda: got.append(b.next_batch()))
        consumer.start()
        b.close()
        consumer.join(2)
        assert got == [[]]
        with pytest.raises(RuntimeError, match="closed"):
            b.submit(job())


class LanesTests:
    """Several consumers (a CPU worker's lanes) share the same cores."""

    @staticmethod
    def take(b: Batcher, timeout: float = 0) -> list:
        """``next_batch`` from a thread of its own: another lane."""
        taken = []
        lane = threading.Thread(target=lambda: taken.extend(j.payload for j in b.next_batch(timeout=timeout)))
        lane.start()
        lane.join()
        return taken

    @staticmethod
    def computing_one_and_holding_one(b: Batcher, clock=None) -> None:
        """This thread (a lane) takes a full batch and computes it; one more job arrives and its
        deadline passes (on the test clock, where one is given)."""
        for i in range(4):
            b.submit(job(payload=i))
        assert [j.payload for j in b.next_batch(timeout=0)] == [0, 1, 2, 3]
        b.submit(job(payload="a"))
        if clock is not None:
            clock.now += 0.010

    def test_while_a_lane_computes_a_partial_batch_waits_for_more_jobs(self, clock):
        b = batcher(clock)
        self.computing_one_and_holding_one(b, clock)
        assert self.take(b) == []  # another lane leaves it: the cores are busy
        for payload in ("b", "c", "d"):
            b.submit(job(payload=payload))
        assert self.take(b) == ["a", "b", "c", "d"]  # full: it goes beside the running batch

    def test_a_held_batch_leaves_once_the_running_one_ends(self, clock):
        b = batcher(clock)
        self.computing_one_and_holding_one(b, clock)
        assert self.take(b) == []
        b.batch_done()
        assert self.take(b) == ["a"]

    def test_a_waiting_lane_is_woken_when_the_running_batch_ends(self):
        b = Batcher(BatchPolicy(max_batch_size=4, max_wait_s=0.001), max_hold_s=60)
        self.computing_one_and_holding_one(b)
        taken = []
        lane = threading.Thread(target=lambda: taken.extend(j.payload for j in b.next_batch(timeout=30)))
        lane.start()
        lane.join(0.2)
        assert lane.is_alive() and taken == []  # held back while this thread computes
        b.batch_done()
        lane.join(2)  # woken by the end of the batch, not by its own timeout or the hold's limit
        assert taken == ["a"]

    def test_a_group_is_held_back_no_longer_than_recent_batches_took(self, clock):
        b = batcher(clock)
        assert b.hold_s() == 0.2  # before any batch was timed
        for took in (1.0, 1.0, 1.0):
            for i in range(4):
                b.submit(job(payload=i))
            b.next_batch(timeout=0)
            clock.now += took
            b.batch_done()
        assert b.hold_s() == pytest.approx(1.0)
        self.computing_one_and_holding_one(b, clock)  # 10 ms past its arrival, 5 ms past its deadline
        clock.now += 0.9
        assert self.take(b) == []
        clock.now += 0.1  # as long as a batch takes: no longer than behind one lane's batch
        assert self.take(b) == ["a"]

    def test_a_group_is_held_back_no_longer_than_the_limit(self, clock):
        b = Batcher(BatchPolicy(max_batch_size=4, max_wait_s=0.005), clock=clock, max_hold_s=0.2)
        self.computing_one_and_holding_one(b, clock)  # 10 ms past its arrival
        assert self.take(b) == []
        clock.now += 0.2  # a quiet pair does not wait on a busy one's lanes for long
        assert self.take(b) == ["a"]

    def test_a_handed_over_job_goes_to_a_free_lane_at_once(self, clock):
        b = batcher(clock)
        self.computing_one_and_holding_one(b, clock)
        b.submit(PendingJob(key="es-en", payload="handed over", text="hola", urgent=True))
        assert self.take(b) == ["handed over", "a"]

    def test_asking_for_the_next_batch_ends_the_last_one(self, clock):
        b = batcher(clock)
        self.computing_one_and_holding_one(b, clock)
        assert [j.payload for j in b.next_batch(timeout=0)] == ["a"]  # one lane alone: its deadline holds


class GroupingTests:
    def test_jobs_of_different_pairs_never_share_a_batch(self, clock):
        b = batcher(clock)
        b.submit(job(key="es-en", payload=1))
        b.submit(job(key="fr-en", payload=2))
        b.submit(job(key="es-en", payload=3))
        clock.now += 1
        batches = [b.next_batch(timeout=0), b.next_batch(timeout=0)]
        assert sorted(sorted(j.payload for j in batch) for batch in batches) == [[1, 3], [2]]
        assert all(len({j.key for j in batch}) == 1 for batch in batches)

    def test_the_group_whose_deadline_comes_first_leaves_first(self, clock):
        b = batcher(clock)
        b.submit(job(key="fr-en", payload="older"))
        clock.now += 0.001
        b.submit(job(key="es-en", payload="newer"))
        clock.now += 1
        assert [j.payload for j in b.next_batch(timeout=0)] == ["older"]

    def test_a_busy_pair_does_not_starve_a_quiet_one(self, clock):
        b = batcher(clock)
        for i in range(8):  # a backlog of es-en: two full batches
            b.submit(job(key="es-en", payload=f"es{i}"))
        clock.now += 0.001
        b.submit(job(key="fr-en", payload="fr"))
        clock.now += 1
        assert {j.key for j in b.next_batch(timeout=0)} == {"es-en"}  # arrived first
        for i in range(4):  # es-en keeps arriving, but now after the French job
            b.submit(job(key="es-en", payload=f"late{i}"))
        assert {j.key for j in b.next_batch(timeout=0)} == {"es-en"}  # the rest of the older backlog
        assert [j.payload for j in b.next_batch(timeout=0)] == ["fr"]

    def test_a_batch_is_sorted_by_length(self, clock):
        b = batcher(clock)
        for payload, tokens in (("long", 30), ("short", 2), ("mid", 10)):
            b.submit(job(payload=payload, tokens=tokens))
        clock.now += 1
        assert [j.payload for j in b.next_batch(timeout=0)] == ["short", "mid", "long"]


class PolicyTests:
    @pytest.mark.parametrize(
        ("values", "message"),
        [
            ({"max_batch_size": 0}, "max_batch_size must be 1..4096"),
            ({"max_wait_s": -1}, "max_wait_s must be 0..10 seconds"),
            ({"max_batch_tokens": 0}, "max_batch_tokens must be positive"),
        ],
    )
    def test_bad_knobs_are_refused(self, values, message):
        with pytest.raises(ValueError, match=message):
            BatchPolicy(**values)


class RunIsolatedTests:
    def test_a_healthy_batch_is_one_call(self):
        calls = []
        results = run_isolated([1, 2, 3], lambda items: calls.append(list(items)) or [i * 10 for i in items])
        assert results == [10, 20, 30]
        assert calls == [[1, 2, 3]]

    def test_a_poisoned_item_fails_alone_and_its_neighbours_keep_their_order(self):
        def run(items):
            if "poison" in items:
                raise ValueError("bad input")
            return [item.upper() for item in items]

        items = [f"t{i}" for i in range(127)]
        items.insert(50, "poison")
        results = run_isolated(items, run)
        assert isinstance(results[50], ValueError)
        assert results[:50] == [f"T{i}" for i in range(50)]
        assert results[51:] == [f"T{i}" for i in range(50, 127)]

    def test_a_fatal_error_is_raised_as_it_is_not_isolated(self):
        calls = []

        def run(items):
            calls.append(list(items))
            raise ConnectionError("the engine is gone")

        with pytest.raises(ConnectionError):
            run_isolated([1, 2, 3, 4], run, fatal=(ConnectionError,))
        assert calls == [[1, 2, 3, 4]]  # no halves: no further call could answer

    def test_a_run_returning_the_wrong_count_is_an_error(self):
        with pytest.raises(RuntimeError, match="2 results for 3 items"):
            run_isolated([1, 2, 3], lambda items: [1, 2])


class RoutePolicyTests:
    """A job may carry its route's batch size and wait; its group follows the latest one."""

    def test_a_routes_smaller_batch_size_and_longer_wait_apply_to_its_group_only(self, clock):
        b = batcher(clock)
        route = BatchPolicy(max_batch_size=2, max_wait_s=0.050)
        for i in range(3):
            b.submit(PendingJob(key="es-en", payload=i, text="hola", policy=route))
        b.submit(job(key="fr-en", payload="fr"))
        assert [j.payload for j in b.next_batch(timeout=0)] == [0, 1]  # full at the route's size
        clock.now += 0.010  # past the worker's 5 ms, within the route's 50 ms
        assert [j.payload for j in b.next_batch(timeout=0)] == ["fr"]
        assert b.next_batch(timeout=0) == []
        clock.now += 0.041
        assert [j.payload for j in b.next_batch(timeout=0)] == [2]

    def test_a_route_cannot_raise_the_batch_size_past_the_workers(self, clock):
        b = batcher(clock)  # the worker's maximum: 4
        for i in range(6):
            b.submit(PendingJob(key="es-en", payload=i, text="hola", policy=BatchPolicy(max_batch_size=100)))
        assert len(b.next_batch(timeout=0)) == 4
