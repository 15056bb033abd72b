"""Settings errors a newcomer meets: an unknown key names the known keys of its section and the
closest one; the example config names only commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from scalerec.cli import app
from scalerec.config import load_settings
from scalerec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_unknown_key_suggests_the_closest_known_key(tmp_path):
    cfg = tmp_path / "scalerec.toml"
    cfg.write_text("[serving]\nprot = 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    msg = info.value.message
    assert "unknown setting 'serving.prot'" in msg and "did you mean 'port'?" in msg
    assert "known keys in [serving]: host, port, workers" in msg
    assert "Extra inputs" not in msg


def test_unknown_section_and_nested_event_type_key():
    with pytest.raises(ConfigError) as info:
        load_settings(None, servng={"port": 1})
    assert "did you mean 'serving'?" in info.value.message and "known keys in the top level" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_settings(None, events={"types": {"play": {"wieght": 2}}})
    assert "did you mean 'weight'?" in info.value.message and "[events.types.play]" in info.value.message


def test_an_unlike_key_lists_the_keys_without_a_guess():
    with pytest.raises(ConfigError) as info:
        load_settings(None, serving={"zzzzzz": 1})
    assert "did you mean" not in info.value.message and "known keys in [serving]" in info.value.message


def _command_paths() -> set[str]:
    root = typer.main.get_command(app)
    paths: set[str] = set()

    def walk(cmd: click.Command, prefix: str) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.add(f"{prefix}{name}")
            walk(sub, f"{prefix}{name} ")

    walk(root, "")
    return paths


@pytest.mark.parametrize("doc", ["scalerec.example.toml", "README.md"])
def test_documents_name_only_commands_that_exist(doc):
    commands = _command_paths()
    text = (REPO / doc).read_text()
    named = re.findall(r"`scalerec ((?:-[-\w]+ \S+ )*)([a-z][\w-]*(?: [a-z][\w-]*)?)", text)
    named += re.findall(r"^scalerec (?:-[-\w]+ \S+ )*([a-z][\w-]*(?: [a-z][\w-]*)?)", text, flags=re.M)
    assert named
    for found in named:
        words = (found[-1] if isinstance(found, tuple) else found).split()
        assert words[0] in commands or " ".join(words) in commands, f"{doc} names `scalerec {' '.join(words)}`"
        if len(words) == 2 and words[0] in commands and any(c.startswith(words[0] + " ") for c in commands):
            assert " ".join(words) in commands, f"{doc} names `scalerec {' '.join(words)}`"
