"""The benchmark's CPU account: /proc parsing, parts, and a real reading of this process."""

import os
import sys
import time

import pytest

from workers.cpu_usage import ProcessTime, cpu_by_part, parse_stat, processes


def stat_line(pid: int, name: str, ppid: int, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return f"{pid} ({name}) S {ppid} 1 1 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 5000 1000 200"


def test_a_stat_line_gives_pid_parent_name_and_cpu_seconds():
    assert parse_stat(stat_line(42, "redis-server", 1, 250, 50), 100) == ProcessTime(42, 1, "redis-server", 3.0, 5000)


def test_a_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    parsed = parse_stat(stat_line(7, "a (b) c) d", 3, 10, 20), 100)
    assert (parsed.pid, parsed.ppid, parsed.name, parsed.seconds) == (7, 3, "a (b) c) d", 0.3)


def test_each_process_counts_in_its_first_matching_part_and_new_ones_count_in_full():
    before = {
        1: ProcessTime(1, 0, "postgres", 10.0),
        2: ProcessTime(2, 1, "python", 5.0),
        3: ProcessTime(3, 2, "python", 1.0),
        9: ProcessTime(9, 0, "cron", 1.0),
    }
    after = {
        1: ProcessTime(1, 0, "postgres", 10.5),
        2: ProcessTime(2, 1, "python", 7.0),
        3: ProcessTime(3, 2, "python", 4.0),
        4: ProcessTime(4, 1, "postgres", 0.25),  # a connection opened meanwhile
        9: ProcessTime(9, 0, "cron", 1.5),
        10: ProcessTime(10, 0, "python", 0.0),
    }
    parts = {
        "model": lambda p: p.ppid == 2,
        "worker": lambda p: p.pid == 2,
        "PostgreSQL": lambda p: p.name.startswith("postgres"),
    }
    assert cpu_by_part(before, after, parts) == {"model": 3.0, "worker": 2.0, "PostgreSQL": 0.75, "everything else": 0.5}


def test_a_reused_pid_counts_from_zero_and_a_renamed_process_does_not():
    before = {5: ProcessTime(5, 1, "old", 100.0, started=10), 6: ProcessTime(6, 2, "kworker/0:1-events", 50.0, started=3)}
    after = {5: ProcessTime(5, 1, "new", 2.0, started=900), 6: ProcessTime(6, 2, "kworker/0:1-mm_percpu_wq", 50.5, started=3)}
    assert cpu_by_part(before, after, {}) == {"everything else": 2.5}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_the_cpu_this_process_burns_shows_in_its_reading():
    before = processes()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = processes()
    used = cpu_by_part(before, after, {"this": lambda p: p.pid == os.getpid()})
    assert 0.2 <= used["this"] <= 2.0
    assert after[os.getpid()].ppid == os.getppid()


def test_no_proc_gives_none(tmp_path):
    assert processes(tmp_path) is None


def test_everything_else_is_named_by_process():
    from workers.cpu_usage import unmatched_by_name

    before = {1: ProcessTime(1, 0, "postgres", 1.0), 2: ProcessTime(2, 0, "cron", 1.0)}
    after = {1: ProcessTime(1, 0, "postgres", 2.0), 2: ProcessTime(2, 0, "cron", 1.5), 3: ProcessTime(3, 0, "cron", 0.25)}
    named = unmatched_by_name(before, after, {"PostgreSQL": lambda p: p.name == "postgres"})
    assert named == {"cron": 0.75}


def test_the_cpu_of_some_processes_together_and_none_when_one_cannot_be_read(tmp_path):
    from workers.cpu_usage import cpu_seconds

    ticks = os.sysconf("SC_CLK_TCK")
    for pid, utime, stime in ((11, 2 * ticks, ticks), (12, ticks, 0)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, "python", 1, utime, stime))
    assert cpu_seconds([11, 12], proc=tmp_path) == 4.0
    assert cpu_seconds([11, 13], proc=tmp_path) is None  # 13 ended
    assert cpu_seconds([os.getpid()]) > 0  # this process, from the real /proc
