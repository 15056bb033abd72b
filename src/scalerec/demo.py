"""`make demo`: build a synthetic shop, train a model, create an API key, print curl examples, serve.

Run as ``python -m scalerec.demo --data-dir DIR``. Every step goes through the `scalerec` command
line, so the demo shows exactly what a user would type; a second run reuses the store, the model
and the key.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

KEY_FILE = "demo-api-key.txt"


def _scalerec(data_dir: Path, *args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "scalerec", "--data-dir", str(data_dir), *args]
    print(f"\n$ scalerec --data-dir {shlex.quote(str(data_dir))} {' '.join(shlex.quote(a) for a in args)}", flush=True)
    if capture:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return out.stdout
    subprocess.run(cmd, check=True)
    return ""


def _has_events(data_dir: Path) -> bool:
    return any((data_dir / "events").glob("date=*/*.parquet"))


def _demo_key(settings) -> str:  # type: ignore[no-untyped-def]
    """The demo's admin key: reused while valid, else a new one (saved beside the data)."""
    from scalerec.serving.auth import ApiKeyStore

    store = ApiKeyStore.from_settings(settings)
    path = Path(settings.data.dir) / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if store.role_of(key) == "admin":
            return key
    key, _ = store.create("admin", "demo")
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _examples(settings, key: str, base: str) -> list[str]:  # type: ignore[no-untyped-def]
    """curl commands over real ids of the store (a customer with history, a popular item)."""
    from scalerec.registry import Registry

    lv = Registry(settings).load(None)
    m = lv.matrix
    counts = np.diff(m.matrix.indptr)
    user = str(m.user_ids[int(np.argmax(counts))])
    item = str(m.item_ids[int(np.argmax(lv.popular))])
    other = str(m.item_ids[int(np.argsort(-lv.popular)[1])])
    auth = f'-H "Authorization: Bearer {key}"'
    event = f'{{"user_id": "{user}", "item_id": "{item}", "event_type": "purchase"}}'
    return [
        f'curl -s {auth} "{base}/v1/users/{user}/recommendations?n=5"',
        f'curl -s {auth} "{base}/v1/users/{user}/recommendations?n=5&max_price=50&max_per_category=2&device=mobile"',
        f'curl -s {auth} "{base}/v1/items/{item}/similar?n=5"',
        f'curl -s {auth} "{base}/v1/popular?n=5"',
        f'curl -s {auth} "{base}/v1/users/a-new-visitor/recommendations?n=5"',
        f"curl -s {auth} -H 'Content-Type: application/json' -X POST {base}/v1/events -d '{event}'",
        f"curl -s {auth} -H 'Content-Type: application/json' -X POST {base}/v1/sessions/recommendations "
        f"-d '{{\"item_ids\": [\"{item}\", \"{other}\"], \"n\": 5}}'",
        f"curl -s {auth} -H 'Content-Type: application/json' -X PATCH {base}/v1/items/{other} -d '{{\"available\": false}}'",
        f'curl -s {auth} "{base}/v1/models"',
        f'curl -s "{base}/v1/metrics" | grep scalerec_http_requests_total',
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalerec.demo", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("demo-store"))
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--trials", type=int, default=8, help="tuning trial budget: N x the families in all, shared by successive halving (~15 s on 2 cores)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after printing the examples (tests)")
    args = p.parse_args(argv)

    from scalerec.config import load_settings
    from scalerec.registry import Registry

    data_dir = args.data_dir.resolve()
    if not _has_events(data_dir):
        _scalerec(data_dir, "synth", "--users", str(args.users), "--items", str(args.items),
                  "--events", str(args.events), "--days", "120")
    _scalerec(data_dir, "stats")
    settings = load_settings(data={"dir": str(data_dir)})
    if Registry(settings).production() is None:
        _scalerec(data_dir, "train", "--models", "popular,itemknn,ease,als", "--trials", str(args.trials))
    _scalerec(data_dir, "models", "list")
    key = _demo_key(settings)
    base = f"http://{args.host}:{args.port}"
    print(f"\nAPI key (admin, saved in {data_dir / KEY_FILE}):\n  {key}\n")
    print("Try these while the server runs (docs: " + base + "/docs):\n")
    for line in _examples(settings, key, base):
        print("  " + line)
    print(flush=True)
    if args.no_serve:
        return 0
    try:
        _scalerec(data_dir, "serve", "--host", args.host, "--port", str(args.port))
    except KeyboardInterrupt:
        pass
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
