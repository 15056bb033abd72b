"""`scalerec serve` start-up: a busy port fails before "serving on" naming --port; no model warns."""

from __future__ import annotations

import socket

import pytest

from scalerec.cli import main


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_busy_port_fails_before_serving_on_and_no_model_warns(tmp_path, capsys):
    d = tmp_path / "shop"
    assert run_main(["-d", str(d), "synth", "--users", "30", "--items", "40", "--events", "300"], capsys)[0] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_main(["-d", str(d), "serve", "--insecure-dev", "--port", str(port)], capsys)
    assert code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "serving on" not in out and "Errno" not in err
    assert "no production model yet" in err and "/v1/popular" in err
