"""Management commands given bad input, or run with the database away: one clear line, exit
status 1 (2 for a bad option), never a traceback, and nothing half-made."""

import os
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import ROOT


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [
    ["status"], ["resend_translations"], ["import_routes"], ["create_api_client", "shop"],
    ["create_agent", "kim", "--language", "en", "--password", "secret-pass"],
    ["benchmark", "--model", "tiny", "--jobs", "8"],
])
def test_the_database_away_is_said_in_one_line(command):
    done = run(*command, DATABASE_URL="postgres://postgres@127.0.0.1:1/test")
    assert done.returncode == 1, done.stdout
    assert "CommandError: The database cannot be reached (postgresql 127.0.0.1:1/test)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_benchmark_asks_for_migrate_before_it_measures_anything(tmp_path):
    done = run("benchmark", "--model", "tiny", "--jobs", "8", DATABASE_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "CommandError: The database lacks" in done.stderr and "run `manage.py migrate`" in done.stderr
    assert "Raw model" not in done.stdout  # said before minutes of measuring, not after


def test_a_database_without_its_tables_is_told_to_migrate(tmp_path):
    done = run("status", DATABASE_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "CommandError: The database refused the command (sqlite" in done.stderr
    assert "no such table" in done.stderr and "Has `manage.py migrate` run?" in done.stderr


@pytest.mark.django_db
class CreateAgentTests:
    @pytest.mark.parametrize(("username", "said"), [
        ("", "A username is required."),
        ("john doe", "Username 'john doe': Enter a valid username."),
        ("k" * 151, "The username has 151 characters; the limit is 150."),
    ])
    def test_a_username_the_admin_would_refuse_is_refused(self, username, said):
        with pytest.raises(CommandError, match=said.replace(".", r"\.").replace("(", r"\(")):
            call_command("create_agent", username, language="en", password="secret-pass")

    @pytest.mark.parametrize(("password", "said"), [
        ("short", "This password is too short. It must contain at least 8 characters."),
        ("password", "This password is too common."),
        ("8675309123", "This password is entirely numeric."),
    ])
    def test_a_password_the_admin_would_refuse_is_refused(self, password, said):
        with pytest.raises(CommandError, match="The password was refused: .*" + said.replace(".", r"\.")):
            call_command("create_agent", "kim", language="en", password=password)
        from django.contrib.auth.models import User

        assert not User.objects.filter(username="kim").exists()

    def test_the_password_can_stay_out_of_the_command_line(self, monkeypatch):
        import io

        from django.contrib.auth.models import User

        monkeypatch.delenv("AGENT_PASSWORD", raising=False)
        monkeypatch.setattr("sys.stdin", io.StringIO())  # not a terminal, however pytest runs
        with pytest.raises(CommandError, match="Give the password: --password, the AGENT_PASSWORD variable"):
            call_command("create_agent", "kim", language="en")  # no terminal here to ask on
        monkeypatch.setenv("AGENT_PASSWORD", "from-the-environment")
        call_command("create_agent", "kim", language="en")
        assert User.objects.get(username="kim").check_password("from-the-environment")

    def test_a_supervisor_sees_every_team_and_a_staff_agent_only_their_own(self, capsys):
        from django.contrib.auth.models import User

        call_command("create_agent", "lead", language="en", password="secret-pass", team="Tier 2", every_team=True)
        call_command("create_agent", "kim", language="en", password="secret-pass", team="Tier 2", staff=True)
        assert "team Tier 2, sees every team's conversations." in capsys.readouterr().out
        assert User.objects.get(username="lead").has_perm("portal.view_every_team")
        kim = User.objects.get(username="kim")
        assert kim.is_staff and not kim.has_perm("portal.view_every_team")

    def test_a_refused_agent_leaves_no_new_team_behind(self):
        from cs_portal.portal.models import Team

        with pytest.raises(CommandError, match="xx"):
            call_command("create_agent", "kim", language="xx", password="secret-pass", team="Ghost team")
        assert not Team.objects.filter(name="Ghost team").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["inf", "nan", "1e12", "-1"])
def test_resend_translations_takes_a_sensible_age_only(value):
    with pytest.raises(CommandError, match="--older-than must be between 0 and"):
        call_command("resend_translations", f"--older-than={value}")


def test_run_system_refuses_a_port_that_is_not_one(monkeypatch):
    from cs_portal.portal.management.commands.run_system import Command

    done = run("run_system", "--port", "70000")
    assert done.returncode == 2 and "argument --port: 70000 is not a port (1-65535)" in done.stderr
    monkeypatch.setenv("PORTAL_PORT", "abc")  # the default from the environment, checked the same way
    with pytest.raises(CommandError, match="argument --port: 'abc' is not a port number"):
        Command().create_parser("manage.py", "run_system").parse_args([])


def test_start_workers_says_why_it_cannot_read_the_plan(tmp_path):
    with pytest.raises(CommandError, match=f"Cannot read the placement plan {tmp_path}"):
        call_command("start_workers", plan=str(tmp_path))
    latin = tmp_path / "plan.json"
    latin.write_bytes('{"workers": [{"name": "gpu0", "device": "cuda:0", "queues": ["translate.é"]}]}'.encode("latin-1"))
    with pytest.raises(CommandError, match="is not UTF-8 text"):
        call_command("start_workers", plan=str(latin))


def test_precision_drift_says_why_a_model_cannot_be_measured(tmp_path):
    with pytest.raises(CommandError, match=f"Cannot measure {tmp_path / 'none'} es->en"):
        call_command("precision_drift", model=str(tmp_path / "none"))


@pytest.mark.django_db
class RetryFailedTests:
    def test_an_outages_failures_are_sent_again_narrowed_and_counted(self, many_translations, capsys,
                                                                    django_capture_on_commit_callbacks):
        from datetime import timedelta

        from django.utils import timezone

        from translation.execution import translation_fail
        from translation.models import Translation, TranslationStatus

        outage, other, old = many_translations[:3], many_translations[3], many_translations[4]
        for row in [*outage, old]:
            translation_fail(translation_id=row.pk, reason="CUDA error: device lost")
        translation_fail(translation_id=other.pk, reason="The model produced an empty translation.")
        Translation.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(hours=3))

        call_command("retry_failed", reason="CUDA error", dry_run=True)
        assert "3 failed translation(s) match; none sent (--dry-run)." in capsys.readouterr().out
        assert Translation.objects.filter(status=TranslationStatus.FAILED).count() == 5
        with django_capture_on_commit_callbacks(execute=False) as sends:
            call_command("retry_failed", reason="CUDA error", limit=2)
        assert "2 translation(s) sent again, 0 refused, 1 more left (--limit 2)." in capsys.readouterr().out
        assert len(sends) == 2
        with django_capture_on_commit_callbacks(execute=False):
            call_command("retry_failed", reason="CUDA error")
        assert "1 translation(s) sent again, 0 refused." in capsys.readouterr().out
        statuses = dict(Translation.objects.values_list("pk", "status"))
        assert [statuses[row.pk] for row in outage] == [TranslationStatus.QUEUED] * 3
        assert statuses[other.pk] == statuses[old.pk] == TranslationStatus.FAILED  # another reason; before --since

    @pytest.mark.parametrize(("option", "said"), [
        ({"since": float("nan")}, "--since must be more than 0"),
        ({"since": 0}, "--since must be more than 0"),
        ({"limit": 0}, "--limit must be between 1 and 1000000"),
        ({"target": "xx"}, "--target 'xx' is not a language code"),
    ])
    def test_bad_options_are_said(self, option, said):
        with pytest.raises(CommandError, match=said):
            call_command("retry_failed", **option)
