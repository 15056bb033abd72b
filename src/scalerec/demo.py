"""`make demo`: build a synthetic shop, train a model, create an API key, serve, and run each example.

Run as ``python -m scalerec.demo --data-dir DIR``. Every step goes through the `scalerec` command
line, so the demo shows exactly what a user would type; a second run reuses the store, the model
and the key.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

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


class Tour:
    """The printed examples, each run against the live server and followed by what it changed.

    Every example is one request (printed as the curl command a user would type); its claim is
    checked on the answers (``failed`` counts the claims that did not hold).
    """

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.failed = 0
        self.checked = 0

    def curl(self, method: str, path: str, body: Any = None) -> str:
        auth = f'-H "Authorization: Bearer {self.key}"'
        if body is None:
            return f'curl -s {auth} "{self.base}{path}"' if method == "GET" else f"curl -s {auth} -X {method} {self.base}{path}"
        data = json.dumps(body)
        return f"curl -s {auth} -H 'Content-Type: application/json' -X {method} {self.base}{path} -d '{data}'"

    def call(self, method: str, path: str, body: Any = None, *, show: bool = True) -> Any:
        if show:
            print(f"\n  {self.curl(method, path, body)}", flush=True)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.key}",
                                              **({"Content-Type": "application/json"} if data else {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        return json.loads(text) if text.lstrip().startswith(("{", "[")) else text

    def claim(self, holds: bool, text: str) -> None:
        """Print what changed, and whether the example showed what it claims."""
        self.checked += 1
        if not holds:
            self.failed += 1
        print(f"    {'->' if holds else 'CLAIM NOT SHOWN:'} {text}", flush=True)

    @staticmethod
    def ids(answer: dict[str, Any]) -> list[str]:
        return [x["item_id"] for x in answer["items"]]

    def item(self, item_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/items/{urllib.parse.quote(item_id)}", show=False)

    def run(self, user: str, item: str) -> int:
        q = urllib.parse.quote
        rec = f"/v1/users/{q(user)}/recommendations?n=5"
        plain = self.call("GET", rec)
        items = {i: self.item(i) for i in self.ids(plain)}
        print(f"    {self.ids(plain)} (strategy {plain['strategy']}, model {plain['model_version']})")
        self.claim(plain["strategy"] == "model" and len(plain["items"]) == 5, "a personal list from the model")

        # A filter that must bite on this list: below the median price of its items, one per category.
        prices = sorted(float(v["price"]) for v in items.values() if v.get("price") is not None)
        cap = prices[len(prices) // 2] if prices else 50.0
        filtered = self.call("GET", f"{rec}&max_price={cap:g}&max_per_category=1")
        f_items = {i: self.item(i) for i in self.ids(filtered)}
        dropped = [i for i in self.ids(plain) if i not in f_items]
        why = ", ".join(f"{i} ({items[i].get('price')}, {(items[i].get('categories') or ['-'])[0]})" for i in dropped)
        cats = [(v.get("categories") or [None])[0] for v in f_items.values()]
        self.claim(self.ids(filtered) != self.ids(plain)
                   and all(v.get("price") is not None and float(v["price"]) <= cap for v in f_items.values())
                   and len(cats) == len(set(cats)),
                   f"{self.ids(filtered)}: every price <= {cap:g}, one item per category; dropped {why or 'nothing'}")

        similar = self.call("GET", f"/v1/items/{q(item)}/similar?n=5")
        self.claim(item not in self.ids(similar) and len(similar["items"]) == 5,
                   f"{self.ids(similar)}: items bought with {item}, never {item} itself")

        popular = self.call("GET", "/v1/popular?n=5")
        self.claim(len(popular["items"]) == 5, f"{self.ids(popular)}: the same for everyone")

        visitor = self.call("GET", "/v1/users/a-new-visitor/recommendations?n=5")
        self.claim(visitor["strategy"] != "model" and len(visitor["items"]) == 5,
                   f"{self.ids(visitor)}: a visitor without history gets {visitor['strategy']} ({visitor['items'][0]['reason']})")

        # A purchase of the list's top item: the next answer must move (bought items are not recommended again).
        top = self.ids(plain)[0]
        self.call("POST", "/v1/events", {"user_id": user, "item_id": top, "event_type": "purchase"})
        after = self.call("GET", rec, show=False)
        self.claim(top not in self.ids(after) and self.ids(after) != self.ids(plain),
                   f"next answer {self.ids(after)}: {top} (just bought) left the list, the rest re-ranked by fold-in")

        session = self.call("POST", "/v1/sessions/recommendations", {"item_ids": [item, top], "n": 5})
        self.claim(not {item, top} & set(self.ids(session)) and len(session["items"]) == 5,
                   f"{self.ids(session)}: for an anonymous session that looked at {item} and {top}")

        # The new top item marked unavailable: it must leave this list and the popular list at once.
        gone = self.ids(after)[0]
        self.call("PATCH", f"/v1/items/{q(gone)}", {"available": False})
        now = self.call("GET", rec, show=False)
        pop_now = self.call("GET", "/v1/popular?n=50", show=False)
        self.claim(gone not in self.ids(now) and gone not in self.ids(pop_now),
                   f"next answer {self.ids(now)}: {gone} is gone from it and from /v1/popular")
        self.call("PATCH", f"/v1/items/{q(gone)}", {"available": True}, show=False)
        print(f"    (the demo marks {gone} available again, so a second run shows the same)")

        models = self.call("GET", "/v1/models")
        serving = models.get("serving") if isinstance(models, dict) else None
        self.claim(bool(models), f"the versions and which one serves: {serving or models}"[:160])
        print(f"\n{self.checked - self.failed} of {self.checked} examples showed what they claim.", flush=True)
        return self.failed


def _subjects(settings) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(a customer with a long history, the most popular item) of the production model."""
    from scalerec.registry import Registry

    lv = Registry(settings).load(None)
    m = lv.matrix
    counts = np.diff(m.matrix.indptr)
    return str(m.user_ids[int(np.argmax(counts))]), str(m.item_ids[int(np.argmax(lv.popular))])


def _wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(proc.returncode or 1)
        try:
            with urllib.request.urlopen(base + "/v1/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server at {base} did not get ready within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalerec.demo", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("demo-store"))
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--trials", type=int, default=8, help="tuning trial budget: N x the families in all, shared by successive halving (~15 s on 2 cores)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true",
                   help="stop after the examples; exit 1 if one did not show what it claims (tests)")
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
    cmd = ["serve", "--host", args.host, "--port", str(args.port)]
    print(f"$ scalerec --data-dir {shlex.quote(str(data_dir))} {' '.join(cmd)}", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "scalerec", "--data-dir", str(data_dir), *cmd])
    try:
        _wait_ready(base, server)
        print(f"\nEach example below is run against the server and followed by what it changed (docs: {base}/docs):")
        user, item = _subjects(settings)
        failed = Tour(base, key).run(user, item)
        if args.no_serve:
            return 1 if failed else 0
        print(f"\nServing on {base} until Ctrl-C; try the commands above.", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
