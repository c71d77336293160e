"""docs/configuration.md is rendered from the Settings object and lists every setting."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from agents.runtime.settings import Settings, Topics, env_name, topic_env_name
from agents.tools.config_doc import CONFIG_DOC, default_text, is_current, render, write


def test_committed_doc_is_the_rendered_one():
    assert CONFIG_DOC.read_text() == render(), "run `nextbest config-doc`"
    assert is_current()


def test_every_setting_and_topic_appears_with_its_variable():
    text = render()
    for f in fields(Settings):
        if f.name != "topics":
            assert f"| `{env_name(f.name)}` |" in text, f.name
    for t in fields(Topics):
        assert f"| `{topic_env_name(t.name)}` | `{getattr(Topics(), t.name)}` |" in text, t.name


def test_every_variable_round_trips_through_from_env():
    """The documented names are the ones `Settings.from_env` reads."""
    env = Settings().to_env()
    for f in fields(Settings):
        if f.name != "topics":
            assert env_name(f.name) in env
    assert Settings.from_env(env) == Settings()


def test_secrets_show_no_default():
    rows = {line.split(" | ")[0].strip("| `"): line for line in render().splitlines()}
    for name in ("NEXTBEST_SASL_PASSWORD", "NEXTBEST_API_TOKENS", "NEXTBEST_API_ADMIN_TOKEN"):
        assert "*(secret)*" in rows[name]


def test_default_text():
    assert default_text(True) == "`1`"
    assert default_text(False) == "`0`"
    assert default_text(86400.0) == "`86400`"
    assert default_text(0.05) == "`0.05`"
    assert default_text("") == ""
    assert default_text(Path("var/state")) == "`var/state`"
    assert default_text(CONFIG_DOC) == "`docs/configuration.md`"
    assert default_text("hunter2", secret=True) == "*(secret)*"


def test_write_and_is_current(tmp_path: Path):
    path = tmp_path / "configuration.md"
    assert not is_current(path)
    assert write(path) == path
    assert is_current(path)
    path.write_text(path.read_text() + "\nedited by hand\n")
    assert not is_current(path)
