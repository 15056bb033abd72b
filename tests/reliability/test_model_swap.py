"""Promotions and a rollback between two versions while client threads read recommendations and post
events against a real `scalerec serve`: zero failed reads and writes."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx

from _server import Server
from _serving_fixtures import train_version
from _reliability import record

SWAPS = 4
READERS = 2


class Load:
    """Client threads counting answers: ok, retried (a 503 + Retry-After that then succeeded), failed."""

    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url, self.keys = url, keys
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def _call(self, client: httpx.Client, method: str, path: str, **kw) -> None:  # noqa: ANN003
        r = client.request(method, path, **kw)
        outcome = "ok"
        if r.status_code == 503 and "retry-after" in r.headers:
            time.sleep(min(float(r.headers["retry-after"]), 2.0))
            r = client.request(method, path, **kw)
            outcome = "retried"
        with self.lock:
            if r.is_success:
                self.counts[outcome] += 1
                version = r.json().get("model_version") if method == "GET" else None
                if version:
                    self.versions[version] += 1
            else:
                self.counts["failed"] += 1
                self.failures.append(f"{method} {path}: {r.status_code} {r.text[:200]}")

    def reader(self, n: int) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys['read']}"}, timeout=30) as c:
            i = 0
            while not self.stop.is_set():
                user = f"u{(i * 7 + n) % 300:03d}"
                self._call(c, "GET", f"/v1/users/{user}/recommendations" if i % 2 else f"/v1/items/i{1 + i % 150:06d}/similar")
                i += 1

    def writer(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys['write']}"}, timeout=30) as c:
            i = 0
            while not self.stop.is_set():
                events = [{"user_id": f"u{(i + j) % 300:03d}", "item_id": f"i{1 + (i + j) % 150:06d}", "event_type": "view"}
                          for j in range(20)]
                self._call(c, "POST", "/v1/events", json={"events": events})
                i += 1


def _serving(url: str, key: str) -> str | None:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["serving"]


def test_model_swaps_under_load_fail_no_request(rel_store, tmp_path) -> None:  # noqa: ANN001
    from scalerec.registry import Registry

    settings = rel_store.settings()
    registry = Registry(settings)
    first = registry.production().version
    second = train_version(settings, "als").version
    assert first != second
    with Server(rel_store.dir, tmp_path / "serve.log") as server:
        load = Load(server.url, rel_store.keys)
        threads = [threading.Thread(target=load.reader, args=(n,)) for n in range(READERS)]
        threads.append(threading.Thread(target=load.writer))
        for t in threads:
            t.start()
        try:
            swaps = 0
            for k in range(SWAPS):
                if k == SWAPS - 1:
                    target = registry.rollback().version
                else:
                    target = first if k % 2 == 0 else second
                    registry.promote(target, force=True)
                deadline = time.monotonic() + 60
                while _serving(server.url, rel_store.keys["admin"]) != target and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert _serving(server.url, rel_store.keys["admin"]) == target, server.log_tail()
                swaps += 1
                time.sleep(0.5)  # requests on the new version
        finally:
            load.stop.set()
            for t in threads:
                t.join(60)
    record(model_swaps=swaps, swap_requests=sum(load.counts.values()), swap_requests_failed=load.counts["failed"],
           swap_requests_retried=load.counts["retried"])
    assert load.counts["failed"] == 0, load.failures[:10]
    assert load.counts["ok"] > 100
    assert {first, second} <= set(load.versions), load.versions  # the readers saw both versions
