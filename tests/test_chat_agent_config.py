"""A chat profile in the config (``builtin = "chat"`` and its settings): what it becomes, and every
way it is refused at start (exit 2, one line naming the file, the table and the key)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtimed.daemon.config import ConfigError, load_config
from runtimed.domain.execution import AgentProfile, ProfileSource

from .process import run_runtimed

CHAT = (sys.executable, "-m", "runtimed.agents.chat")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runtimed.toml"
    path.write_text(text)
    return path


def complaint(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={} if environ is None else environ)
    return str(caught.value)


def test_a_chat_profile_runs_the_chat_agent_with_its_settings_as_text(tmp_path):
    path = write(
        tmp_path,
        '[profiles.local]\nbuiltin = "chat"\nbase_url = "http://127.0.0.1:11434/v1"\nmodel = "qwen2.5:0.5b"\n'
        'api_key_env = "OPENAI_API_KEY"\nsystem_prompt = "Be careful."\nmax_tokens = 1024\n'
        'timeout_seconds = 30\nrestart = "never"\n',
    )

    profiles = load_config(path, environ={"OPENAI_API_KEY": "sk-secret"}).execution.profiles

    assert [profile.name for profile in profiles] == ["builtin:echo", "builtin:chat", "local"]
    assert profiles[1] == AgentProfile("builtin:chat", ProfileSource.BUILTIN, CHAT)
    local = profiles[2]
    assert (local.command, local.restart.value) == (CHAT, "never")
    assert local.settings == {
        "base_url": "http://127.0.0.1:11434/v1",
        "model": "qwen2.5:0.5b",
        "api_key_env": "OPENAI_API_KEY",
        "system_prompt": "Be careful.",
        "max_tokens": "1024",
        "timeout_seconds": "30",
    }
    # The key itself is in no part of the config: only its variable's name.
    assert "sk-secret" not in repr(load_config(path, environ={"OPENAI_API_KEY": "sk-secret"}))


def test_only_the_model_is_required(tmp_path):
    path = write(tmp_path, '[profiles.local]\nbuiltin = "chat"\nmodel = "m"\n')

    assert load_config(path, environ={}).execution.profiles[-1].settings == {"model": "m"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('builtin = "chat"\n', '[profiles.x] needs model = "…": builtin = "chat" has no default model'),
        (
            'command = ["agent"]\nmodel = "m"\n',
            '[profiles.x] model is a setting of builtin = "chat" only, and this profile runs a command',
        ),
        (
            'builtin = "echo"\nbase_url = "http://127.0.0.1:1/v1"\n',
            '[profiles.x] base_url is a setting of builtin = "chat" only, and this profile runs builtin = "echo"',
        ),
        (
            'command = ["agent"]\napi_key_env = "K"\n',
            '[profiles.x] api_key_env is a setting of builtin = "chat" only, and this profile runs a command',
        ),
        ('builtin = "chat"\nmodel = ""\n', "[profiles.x] model must not be empty"),
        ('builtin = "chat"\nmodel = 5\n', "[profiles.x] model must be a string, not an integer"),
        (
            'builtin = "chat"\nmodel = "m"\nbase_url = "127.0.0.1:11434"\n',
            "[profiles.x] base_url must be an http:// or https:// URL, not '127.0.0.1:11434'",
        ),
        ('builtin = "chat"\nmodel = "m"\nmax_tokens = 0\n', "[profiles.x] max_tokens must be at least 1, not 0"),
        (
            'builtin = "chat"\nmodel = "m"\nmax_tokens = 1.5\n',
            "[profiles.x] max_tokens must be an integer, not a float",
        ),
        (
            'builtin = "chat"\nmodel = "m"\ntimeout_seconds = 0\n',
            "[profiles.x] timeout_seconds must be a finite number above 0, not 0",
        ),
        (
            'builtin = "chat"\nmodel = "m"\napi_key_env = "A=B"\n',
            "[profiles.x] api_key_env must be an environment variable name",
        ),
        (
            'builtin = "chat"\nmodel = "m"\napi_key_env = "UNSET_KEY"\n',
            "[profiles.x] api_key_env names UNSET_KEY, which is unset or empty",
        ),
        (
            'builtin = "chat"\nmodel = "m"\napi_key_env = "EMPTY_KEY"\n',
            "[profiles.x] api_key_env names EMPTY_KEY, which is unset or empty",
        ),
    ],
)
def test_every_chat_profile_problem_names_the_file_the_table_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, "[profiles.x]\n" + text)

    assert complaint(path, {"EMPTY_KEY": ""}) == f"{path}: {expected}"


def test_a_key_with_whitespace_is_refused_without_showing_it(tmp_path):
    path = write(tmp_path, '[profiles.x]\nbuiltin = "chat"\nmodel = "m"\napi_key_env = "KEY"\n')

    message = complaint(path, {"KEY": "sk-pasted\n"})

    assert message == f"{path}: [profiles.x] api_key_env: the key in KEY contains whitespace or control characters"


def test_the_key_may_not_be_the_daemons_own_token(tmp_path):
    path = write(
        tmp_path,
        '[server]\nlocal_token_env = "RUNTIMED_TOKEN"\n'
        '[profiles.x]\nbuiltin = "chat"\nmodel = "m"\napi_key_env = "RUNTIMED_TOKEN"\n',
    )

    assert complaint(path, {"RUNTIMED_TOKEN": "t0ken"}) == (
        f"{path}: [profiles.x] api_key_env names RUNTIMED_TOKEN, the daemon's own token "
        "([server] local_token_env), which never reaches an agent"
    )


@pytest.mark.process
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('builtin = "chat"\n', '[profiles.local] needs model = "…": builtin = "chat" has no default model'),
        (
            'builtin = "chat"\nmodel = "m"\napi_key_env = "NO_SUCH_KEY_VARIABLE"\n',
            "[profiles.local] api_key_env names NO_SUCH_KEY_VARIABLE, which is unset or empty",
        ),
        (
            'command = ["agent"]\nmodel = "m"\n',
            '[profiles.local] model is a setting of builtin = "chat" only, and this profile runs a command',
        ),
    ],
)
def test_serve_refuses_a_bad_chat_profile_with_exit_2_and_one_line(tmp_path, text, expected):
    path = write(tmp_path, "[profiles.local]\n" + text)

    result = run_runtimed("serve", "--config", str(path), "--bind", "127.0.0.1:0")

    assert (result.returncode, result.stderr) == (2, f"runtimed: {path}: {expected}\n")
