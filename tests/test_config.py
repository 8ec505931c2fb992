"""Settings: one definition feeds the traits, the environment and the docs."""

from __future__ import annotations

from pathlib import Path

from traitlets.config import Config

from scope.config import ScopeSettings, render_config_doc

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_configuration_doc_is_generated_from_the_settings():
    text = DOC.read_text()
    assert render_config_doc(text) == text, "run `python -m scope.config` to regenerate docs/configuration.md"
    for name, trait in ScopeSettings.class_traits(config=True).items():
        assert f"`ScopeApp.{name}`" in text and trait.metadata["env"] in text


def test_environment_beats_default_and_config_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DAYDREAM_SCOPE_MAX_SESSIONS", "9")
    monkeypatch.setenv("DAYDREAM_SCOPE_OPEN_API", "yes")
    monkeypatch.setenv("DAYDREAM_SCOPE_SERVER_ICE_SERVERS", "stun:a.example:3478, turn:b.example:3478")
    monkeypatch.setenv("DAYDREAM_SCOPE_MODELS_DIR", str(tmp_path / "m"))
    settings = ScopeSettings()
    assert settings.max_sessions == 9 and settings.open_api is True
    assert settings.server_ice_servers == ["stun:a.example:3478", "turn:b.example:3478"]
    assert settings.models_path == (tmp_path / "m").resolve()
    assert settings.assets_path == (tmp_path / "assets").resolve()
    assert settings.lora_path == (tmp_path / "m" / "lora").resolve()
    config = Config()
    config.ScopeSettings.max_sessions = 2
    assert ScopeSettings(config=config).max_sessions == 2


def test_defaults_without_environment(monkeypatch):
    for name, trait in ScopeSettings.class_traits(config=True).items():
        monkeypatch.delenv(trait.metadata["env"], raising=False)
    settings = ScopeSettings()
    assert settings.max_sessions == 4 and settings.open_api is False
    assert settings.server_ice_servers == []
    assert settings.models_path == Path("~/.daydream-scope/models").expanduser().resolve()
