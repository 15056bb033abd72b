"""`scalerec placements`: add (JSON and TOML), list, show, remove, check-rule, blocklist; a bad
rule exits non-zero with one line naming the position, and nothing is stored; [[placements]] in
the settings file is validated when the settings load."""

from __future__ import annotations

import json

import pytest

from scalerec.cli import main
from scalerec.config import load_settings
from scalerec.errors import ConfigError


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def store(tmp_path, capsys) -> list[str]:
    """A created store (placements belong to one; a command on a folder that is not a store fails)."""
    d = ["--data-dir", str(tmp_path / "shop")]
    assert run([*d, "init", "--no-config"], capsys)[0] == 0
    return d


def test_add_list_show_remove(tmp_path, capsys):
    d = store(tmp_path, capsys)
    spec = tmp_path / "home.json"
    spec.write_text(json.dumps({"strategy": "personal", "filter": "price < 50",
                                "promotions": [{"name": "new", "rule": "age_days < 30", "slots": 2}]}))
    code, out, _ = run([*d, "placements", "add", "home", str(spec)], capsys)
    assert code == 0 and "created placement home (personal)" in out
    toml = tmp_path / "cart.toml"
    toml.write_text('strategy = "complementary"\nn = 4\n[diversity]\nby = "attributes.brand"\nmax_per = 1\n')
    assert run([*d, "placements", "add", "cart", str(toml)], capsys)[0] == 0
    code, out, _ = run([*d, "placements", "list", "--json"], capsys)
    rows = json.loads(out)
    assert [(r["name"], r["spec"]["strategy"]) for r in rows] == [("cart", "complementary"), ("home", "personal")]
    assert rows[0]["spec"]["diversity"]["max_per"] == 1
    code, out, _ = run([*d, "placements", "show", "home"], capsys)
    assert json.loads(out)["spec"]["filter"] == "price < 50"
    assert run([*d, "placements", "remove", "home"], capsys)[0] == 0
    code, _, err = run([*d, "placements", "show", "home"], capsys)
    assert code == 2 and "no placement 'home'" in err


def test_a_bad_rule_is_one_line_with_its_position_and_nothing_is_stored(tmp_path, capsys):
    d = store(tmp_path, capsys)
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"boosts": [{"name": "b", "rule": "price << 3"}]}))
    code, _, err = run([*d, "placements", "add", "bad", str(spec)], capsys)
    assert code == 2 and err.startswith("error: boosts[0].rule: invalid rule at position 7") and err.strip().count("\n") == 0
    code, out, _ = run([*d, "placements", "list", "--json"], capsys)
    assert json.loads(out) == []
    code, _, err = run(["placements", "check-rule", 'category in ("a" "b")'], capsys)
    assert code == 2 and "position 17" in err
    code, out, _ = run(["placements", "check-rule", "price < $item.price and $context.device == 'mobile'"], capsys)
    assert code == 0 and "$context, $item" in out
    spec.write_text("{not json")
    code, _, err = run([*d, "placements", "add", "bad", str(spec)], capsys)
    assert code == 2 and "not valid JSON" in err


def test_blocklist(tmp_path, capsys):
    d = store(tmp_path, capsys)
    assert run([*d, "placements", "blocklist"], capsys)[1].strip() == "(empty)"
    code, out, _ = run([*d, "placements", "blocklist", "--set", "a, b,a"], capsys)
    assert code == 0 and out.split() == ["a", "b"]
    assert run([*d, "placements", "blocklist", "--set", ""], capsys)[1].strip() == "(empty)"


def test_settings_placements_are_validated_on_load(tmp_path):
    cfg = tmp_path / "scalerec.toml"
    cfg.write_text('[[placements]]\nname = "home"\nfilter = "price > 1"\n\n'
                   '[[placements]]\nname = "pdp"\nstrategy = "similar"\nfilter = "price < $item.price and"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "placements.1" in err.value.message and "invalid rule at position 23" in err.value.message
    cfg.write_text('[[placements]]\nname = "home"\nfilter = "price > 1"\n')
    assert load_settings(cfg).placements[0].filter == "price > 1"
