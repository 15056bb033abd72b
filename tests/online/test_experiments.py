"""Experiments end to end through the real HTTP app: creation, sticky assignment across two
workers, serving several versions at once, SRM on a skewed split, and a simulated experiment
whose better variant (ALS over popularity, on shoppers with known tastes) wins."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from scalerec.config import Settings
from scalerec.data.impressions import ImpressionStore
from scalerec.datasets.shopper import Shoppers, simulate
from scalerec.errors import ConflictError, NotFoundError, ValidationError
from scalerec.online import experiments as ex
from scalerec.online.report import experiment_report, report_html, srm_check
from scalerec.serving.impressions import to_table
from tests._serving_fixtures import make_api

SHOP = {"n_users": 500, "n_items": 120, "seed": 11, "days": 60}
START = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60)).date()  # the history ends today: CUPED has a pre-period


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic shop whose history ends today, a popularity version in production and an ALS candidate."""
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    d = tmp_path_factory.mktemp("experiments") / "data"
    settings = Settings(data={"dir": d})
    store = DataStore.open(settings)
    generate_store(store, n_events=40_000, start=START, **SHOP)
    store.close()
    popular = train(settings, TrainOptions(models=["popular"], trials=1)).version.version
    als = train(settings, TrainOptions(models=["als"], trials=1, promote=False)).version.version
    return {"dir": d, "popular": popular, "als": als}


def _api(shop: dict[str, Any], tmp_path: Path) -> Any:
    return make_api(shop["dir"], tmp_path)


def test_create_validates_and_refuses_overlaps(shop, tmp_path):
    api = _api(shop, tmp_path)
    try:
        body = {"name": "t1", "variants": [{"name": "control", "version": "production", "weight": 50},
                                           {"name": "new", "version": shop["als"], "weight": 50}]}
        r = api.post("/v1/experiments", role="admin", json=body)
        assert r.status_code == 201, r.text
        assert api.post("/v1/experiments", role="admin", json=body).status_code == 409  # same placement (every)
        bad = {**body, "name": "t2", "variants": [body["variants"][0], {"name": "x", "version": "v9999", "weight": 1}]}
        r = api.post("/v1/experiments", role="admin", json=bad)
        assert r.status_code == 404 and "v9999" in r.json()["error"]["message"]
        assert api.post("/v1/experiments", role="write", json=body).status_code == 403  # admin only
        listed = api.get("/v1/experiments", role="admin").json()["experiments"]
        assert [e["name"] for e in listed] == ["t1"] and listed[0]["status"] == "running"
        assert api.post("/v1/experiments/t1/stop", role="admin").json()["status"] == "stopped"
        assert api.post("/v1/experiments", role="admin", json={**body, "name": "t3"}).status_code == 201
    finally:
        api.service.close()
    with pytest.raises(ValidationError, match="NAME=VERSION:WEIGHT"):
        ex.parse_variant("new=v1")
    with pytest.raises(ValidationError, match="at least two"):
        ex.validate("x", [ex.parse_variant("a=production:1")], placement=None, start=None, end=None, seed=0, versions=set())


def test_assignment_is_sticky_across_two_workers_and_serves_each_variant_version(shop, tmp_path):
    from scalerec.serving.service import RecommendService

    api = _api(shop, tmp_path)
    other = RecommendService(api.settings)  # a second worker over the same data directory
    try:
        r = api.post("/v1/experiments", role="admin", json={
            "name": "sticky", "placement": "home", "seed": 5,
            "variants": [{"name": "control", "version": "production", "weight": 30},
                         {"name": "new", "version": shop["als"], "weight": 70}]})
        assert r.status_code == 201
        other.refresh()  # the other worker's watcher poll
        users = [str(u) for u in api.service.live.model.user_ids[:200]]
        seen: dict[str, str] = {}
        for u in users:
            a = api.get(f"/v1/users/{u}/recommendations?n=5&placement=home").json()
            b = other.recommend_user(u, 5, placement="home")
            again = api.get(f"/v1/users/{u}/recommendations?n=5&placement=home").json()
            assert a["variant"] == b["variant"] == again["variant"] and a["variant"] in ("control", "new")
            want = {"control": shop["popular"], "new": shop["als"]}[a["variant"]]
            assert a["model_version"] == b["model_version"] == want  # several versions served at once
            seen[u] = a["variant"]
        share = sum(v == "new" for v in seen.values()) / len(seen)
        assert 0.6 < share < 0.8  # 70% by weight
        outside = api.get(f"/v1/users/{users[0]}/recommendations?n=5&placement=cart").json()
        assert outside["variant"] is None and outside["model_version"] == shop["popular"]
        # the impressions carry the variant, the placement and the served version
        api.service.impressions.flush()
        imp = ImpressionStore(Path(api.settings.data.dir) / "impressions").read().to_pylist()
        home = [i for i in imp if i["placement"] == "home"]
        assert len(home) == 400 and all(i["variant"] == seen[i["user_id"]] and i["experiment"] == "sticky" for i in home)
        assert all(len(i["items"]) == 5 for i in home)
    finally:
        other.close()
        api.service.close()


def test_two_serving_processes_assign_alike_and_each_impression_counts_once(shop, tmp_path, monkeypatch):
    """Two real `scalerec serve` processes on one data directory: every user gets the same variant
    and version from both, each answer's impression is written once (by the process that served
    it), and events sent to the other process are attributed to it."""
    import time

    import httpx

    from _server import Server
    from scalerec.data.store import DataStore
    from scalerec.online.kpis import KpiWindow, kpis
    from scalerec.registry import Registry
    from scalerec.serving.auth import ApiKeyStore

    d = tmp_path / "data"
    shutil.copytree(shop["dir"], d)
    settings = Settings(data={"dir": d})
    keys = ApiKeyStore.from_settings(settings)
    h = {role: {"Authorization": f"Bearer {keys.create(role, f't-{role}')[0]}"} for role in ("read", "write", "admin")}
    users = [str(u) for u in Registry(settings).load().matrix.user_ids[:60]]
    monkeypatch.setenv("SCALEREC_ONLINE__IMPRESSIONS_FLUSH_S", "0.5")
    a, b = Server(d, tmp_path / "a.log"), Server(d, tmp_path / "b.log")
    Server.start_all(a, b)
    try:
        def until(check, what):
            deadline = time.monotonic() + 60
            while not check():
                assert time.monotonic() < deadline, f"{what} not within 60 s"
                time.sleep(0.2)

        get = lambda srv, u: httpx.get(f"{srv.url}/v1/users/{u}/recommendations?n=5", headers=h["read"], timeout=30)  # noqa: E731
        body = {"name": "two-procs", "seed": 3, "variants": [{"name": "control", "version": "production", "weight": 50},
                                                             {"name": "new", "version": shop["als"], "weight": 50}]}
        r = httpx.post(f"{a.url}/v1/experiments", headers=h["admin"], json=body, timeout=30)
        assert r.status_code == 201, r.text
        served: dict[str, str] = {}  # recommendation id -> variant
        probe = users.pop()

        def sees(srv):
            r = get(srv, probe).json()
            if r.get("variant") is not None:
                served[r["recommendation_id"]] = r["variant"]
            return r.get("variant") is not None

        for srv in (a, b):  # each process's watcher picks it up and loads the second version
            until(lambda srv=srv: sees(srv), "the experiment")
        exp = ex.get(DataStore.open(settings, read_only=True).catalog, "two-procs")
        want_version = {"control": shop["popular"], "new": shop["als"]}
        clicks = {"control": 0, "new": 0}
        for u in users:
            ra, rb = get(a, u).json(), get(b, u).json()
            assert ra["variant"] == rb["variant"] == exp.assign(u).name, u
            assert ra["model_version"] == rb["model_version"] == want_version[ra["variant"]]
            served[ra["recommendation_id"]] = served[rb["recommendation_id"]] = ra["variant"]
            # the click on A's list goes to B and the other way round
            for resp, other in ((ra, b), (rb, a)):
                ev = {"user_id": u, "item_id": resp["items"][0]["item_id"], "event_type": "click",
                      "recommendation_id": resp["recommendation_id"]}
                assert httpx.post(f"{other.url}/v1/events", headers=h["write"], json=[ev], timeout=30).status_code == 202
                clicks[resp["variant"]] += 1
        assert len(served) == 2 * len(users) + 2 and set(served.values()) == {"control", "new"}
        imp = ImpressionStore(d / "impressions")
        until(lambda: set(served) <= set(imp.read().column("recommendation_id").to_pylist()), "every impression")
    finally:
        a.stop()
        b.stop()
    rows = imp.read()
    rids = [r for r in rows.column("recommendation_id").to_pylist() if r in served]
    assert sorted(rids) == sorted(served)  # each once, none lost
    writers = {f.name.split("-")[1] for f in imp.files()}
    assert writers == {str(a.proc.pid), str(b.proc.pid)}  # both processes wrote theirs
    store = DataStore.open(settings, read_only=True)
    got = {r["variant"]: r for r in kpis(store, KpiWindow.from_settings(settings), by=["variant"])}
    for variant in ("control", "new"):
        assert got[variant]["impressions"] == sum(v == variant for v in served.values())
        assert got[variant]["clicks"] == clicks[variant]
    store.close()


def test_srm_is_detected_on_a_skewed_split(shop, tmp_path):
    assert not srm_check([5030, 4970], [50, 50])["mismatch"]
    assert srm_check([5300, 4700], [50, 50])["mismatch"]
    assert not srm_check([2970, 7030], [30, 70])["mismatch"]
    # an experiment whose logged split is skewed (60/40 against 50/50) is reported as broken, whatever its KPIs
    api = _api(shop, tmp_path)
    try:
        exp = ex.validate("skew", [ex.parse_variant("control=production:50"), ex.parse_variant(f"new={shop['als']}:50")],
                          placement=None, start=None, end=None, seed=0, versions={shop["als"]})
        ex.create(api.service.store.catalog, exp)
        now = dt.datetime.now(dt.timezone.utc).timestamp()
        rows = [{"recommendation_id": f"r{k}", "at": now, "user_id": f"u{k}", "kind": "user", "model_version": "v",
                 "strategy": "model", "experiment": "skew", "variant": "control" if k % 5 < 3 else "new", "items": ["a"]}
                for k in range(1000)]
        ImpressionStore(Path(api.settings.data.dir) / "impressions").write(to_table(rows))
        report = experiment_report(api.settings, api.service.store, ex.get(api.service.store.catalog, "skew"),
                                   until=now + 1)
        assert report["units"] == {"control": 600, "new": 400}
        assert report["srm"]["mismatch"] and not report["decided"] and "sample ratio mismatch" in report["verdict"]
    finally:
        api.service.close()


def test_simulated_experiment_the_better_variant_wins(shop, tmp_path):
    api = _api(shop, tmp_path)
    try:
        r = api.post("/v1/experiments", role="admin", json={
            "name": "als-vs-popular",
            "variants": [{"name": "control", "version": "production", "weight": 50},
                         {"name": "new", "version": shop["als"], "weight": 50}]})
        assert r.status_code == 201
        shoppers = Shoppers(SHOP["n_users"], SHOP["n_items"], seed=SHOP["seed"], days=SHOP["days"], start=START)

        def recommend(user: str) -> dict:
            resp = api.get(f"/v1/users/{user}/recommendations?n=10")
            assert resp.status_code == 200
            return resp.json()

        def post(events: list[dict]) -> None:
            assert api.post("/v1/events", json=events).status_code == 202

        with api.client:  # one portal thread for every request (a client not entered starts one per request)
            sim = simulate(shoppers, recommend, post, sessions=3000, seed=1)
        api.service.impressions.flush()
        true_lift = sim.true_lift("new", "control")
        assert true_lift > 0.2, "the simulator's tastes favour the personalised model"
        report = api.get("/v1/experiments/als-vs-popular", role="admin").json()
        conv = report["kpis"]["conversion"]["variants"]
        assert report["decided"] and report["winner"] == "new", json.dumps(report["kpis"]["conversion"], indent=1)
        assert "new lifts conversion by" in report["verdict"] and "95%" in report["verdict"]
        lift = conv["new"]["lift"]
        assert lift["significant"] and lift["low"] > 0
        # the estimate is within 3.29 standard errors of the simulator's true lift (a 99.9% band:
        # the 95% coverage itself is checked over many replications in test_report.py)
        assert abs(np.log1p(lift["lift"]) - np.log1p(true_lift)) <= 3.29 * lift["sd_log"], (lift, true_lift)
        assert not report["srm"]["mismatch"]
        cl = conv["new"]["cuped_lift"]
        assert abs(np.log1p(cl["lift"]) - np.log1p(true_lift)) <= 3.29 * cl["sd_log"]
        assert report["kpis"]["conversion"]["variance_reduction"] >= 0  # CUPED never widens it (theta minimises the variance)
        for v in ("control", "new"):
            assert conv[v]["low"] <= conv[v]["value"] <= conv[v]["high"]
        assert "Verdict" in api.get("/v1/experiments/als-vs-popular?format=html", role="admin").text
        # KPIs by variant over the same impressions
        rows = api.get("/v1/kpis?by=variant", role="admin").json()["rows"]
        by = {r["variant"]: r for r in rows}
        assert by["new"]["conversion"] > by["control"]["conversion"]
        assert by["new"]["impressions"] + by["control"]["impressions"] == 3000
        # promoting the winner makes ALS production and stops the experiment
        out = api.post("/v1/experiments/als-vs-popular/promote-winner", role="admin", json={}).json()
        assert out["winner"] == "new" and out["promoted"] == shop["als"]
        assert api.service.live.model.version == shop["als"]
        assert ex.get(api.service.store.catalog, "als-vs-popular").status == "stopped"
    finally:
        api.service.close()


def test_cli_create_list_show_stop_and_kpis(shop, tmp_path):
    from scalerec.cli import app

    d = tmp_path / "data"
    shutil.copytree(shop["dir"], d)
    run = CliRunner().invoke
    r = run(app, ["--data-dir", str(d), "experiments", "create", "c1", "--variant", "control=production:50",
                  "--variant", f"new={shop['als']}:50", "--placement", "home"])
    assert r.exit_code == 0, r.output
    r = run(app, ["--data-dir", str(d), "experiments", "create", "c2", "--variant", "a=production"])
    assert r.exit_code != 0 and isinstance(r.exception, ValidationError)
    listed = json.loads(run(app, ["--data-dir", str(d), "experiments", "list", "--json"]).output)
    assert [(e["name"], e["placement"]) for e in listed] == [("c1", "home")]
    shown = run(app, ["--data-dir", str(d), "experiments", "show", "c1", "--json", "--html", str(tmp_path / "r.html")])
    report = json.loads(shown.output)
    assert not report["decided"] and "not enough evidence" in report["verdict"]
    assert "Verdict" in (tmp_path / "r.html").read_text()
    r = run(app, ["--data-dir", str(d), "experiments", "promote-winner", "c1"])
    assert isinstance(r.exception, ConflictError) and "no winner yet" in str(r.exception)
    assert run(app, ["--data-dir", str(d), "experiments", "stop", "c1"]).exit_code == 0
    r = run(app, ["--data-dir", str(d), "experiments", "stop", "nope"])
    assert isinstance(r.exception, NotFoundError)
    out = json.loads(run(app, ["--data-dir", str(d), "kpis", "--by", "placement", "--since", "7d", "--json", "--offline"]).output)
    assert out["rows"] == [] and {v["version"] for v in out["versions"]} == {shop["popular"], shop["als"]}
    assert all("offline_test" in v for v in out["versions"])


def test_interleaving_experiment_prefers_the_better_ranker_with_fewer_sessions(shop, tmp_path):
    api = _api(shop, tmp_path)
    try:
        r = api.post("/v1/experiments", role="admin", json={
            "name": "il", "method": "interleave",
            "variants": [{"name": "control", "version": "production", "weight": 50},
                         {"name": "new", "version": shop["als"], "weight": 50}]})
        assert r.status_code == 201, r.text
        shoppers = Shoppers(SHOP["n_users"], SHOP["n_items"], seed=SHOP["seed"], days=SHOP["days"], start=START)
        lists = []

        def recommend(user: str) -> dict:
            resp = api.get(f"/v1/users/{user}/recommendations?n=10").json()
            lists.append(resp)
            return resp

        with api.client:
            simulate(shoppers, recommend, lambda evs: api.post("/v1/events", json=evs), sessions=800, seed=2)
        assert all(x["variant"] == "interleaved" and len(x["items"]) == 10 for x in lists)
        assert lists[0]["model_version"] == f"{shop['popular']}+{shop['als']}"
        api.service.impressions.flush()
        imp = ImpressionStore(Path(api.settings.data.dir) / "impressions").read().to_pylist()
        assert all(set(i["teams"]) <= {"control", "new"} and len(i["teams"]) == len(i["items"]) for i in imp)
        report = api.get("/v1/experiments/il", role="admin").json()
        il = report["interleaving"]
        assert report["winner"] == "new" and il["significant"] and il["wins"]["new"] > il["wins"]["control"], il
        assert "new is preferred over control" in report["verdict"]
    finally:
        api.service.close()
