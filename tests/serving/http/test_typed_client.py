"""A typed Python client generated from the live ``/openapi.json`` by a real generator
(openapi-python-client) calls the real app on a real uvicorn: every endpoint a shop calls, through the
generated functions and models, and the error answers parsed into the generated error class.

The generator needs a typer older than the CLI's, so it lives in its own virtual environment under the
user's cache directory (built once: ``pip install openapi-python-client``). Where it cannot be built
(offline), the test fails under CI (``SCALEREC_REQUIRE_SERVERS``) and is skipped elsewhere.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from _live import LiveServer
from _servers import unavailable
from _serving_fixtures import base_store, make_api  # noqa: F401  (fixture)

#: The generator and the formatter it runs on its output, pinned: the generated code's API is the test's.
GENERATOR = ("openapi-python-client==0.29.1", "ruff==0.17.5")
PACKAGE = "scalerec_client"


def _generator_venv() -> Path:
    """The generator's own venv, built once per pinned version; a marker written last means complete."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scalerec-tests"
    target = cache / ("codegen-" + "-".join(p.replace("==", "-") for p in GENERATOR))
    exe, done = target / "bin" / "openapi-python-client", target / ".complete"
    if done.exists():
        return exe
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        out = subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", *GENERATOR],
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        unavailable(f"could not build the openapi-python-client venv in {target}: {e}")
    if out.returncode != 0:
        unavailable(f"pip install {' '.join(GENERATOR)} failed: {(out.stderr or out.stdout).strip()[-1500:]}")
    done.touch()
    return exe


@pytest.fixture(scope="module")
def live(base_store, tmp_path_factory):  # noqa: ANN001, ANN201, F811
    api = make_api(base_store, tmp_path_factory.mktemp("typed-client"))
    from scalerec.serving.http.app import create_app

    with LiveServer(create_app(api.service, watch=False)) as server:
        yield api, server.url
    api.service.close()


@pytest.fixture(scope="module")
def client_pkg(live, tmp_path_factory):  # noqa: ANN001, ANN201
    """The client generated from the document the running server publishes (not from the code)."""
    exe = _generator_venv()
    _, url = live
    out = tmp_path_factory.mktemp("generated")
    doc = out / "openapi.json"
    doc.write_bytes(httpx.get(f"{url}/openapi.json").content)
    proc = subprocess.run([str(exe), "generate", "--path", str(doc), "--meta", "none", "--fail-on-warning",
                           "--output-path", str(out / PACKAGE)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert proc.returncode == 0, f"the generator refused the document:\n{proc.stdout}\n{proc.stderr}"
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _mod(pkg, path: str):  # noqa: ANN001, ANN202
    return importlib.import_module(f"{pkg.__name__}.{path}")


def test_generated_client_calls_every_endpoint(live, client_pkg) -> None:  # noqa: ANN001
    api, url = live
    c = client_pkg
    m = _mod(c, "models")
    admin = c.AuthenticatedClient(base_url=url, token=api.keys["admin"], raise_on_unexpected_status=True)
    user = str(api.service.live.model.user_ids[0])
    items = [str(i) for i in api.service.live.model.item_ids[:5]]

    def ok(resp, *codes: int):  # noqa: ANN001, ANN202
        assert int(resp.status_code) in (codes or (200,)), (resp.status_code, resp.content[:500])
        return resp.parsed

    rec = ok(_mod(c, "api.recommendations.user_recommendations_v1_users_user_id_recommendations_get")
             .sync_detailed(user, client=admin, n=5))
    assert isinstance(rec, m.RecommendationList) and len(rec.items) == 5
    assert all(isinstance(i, m.RecommendedItem) and isinstance(i.item_id, str) for i in rec.items)
    assert rec.user_id == user and rec.model_version

    similar = ok(_mod(c, "api.recommendations.similar_items_v1_items_item_id_similar_get").sync_detailed(items[0], client=admin, n=3))
    assert isinstance(similar, m.RecommendationList) and similar.item_id == items[0] and items[0] not in [i.item_id for i in similar.items]
    for name in ("popular_v1_popular_get", "trending_v1_trending_get"):
        lst = ok(_mod(c, f"api.recommendations.{name}").sync_detailed(client=admin, n=4))
        assert isinstance(lst, m.RecommendationList) and len(lst.items) == 4
    session = ok(_mod(c, "api.recommendations.session_recommendations_v1_sessions_recommendations_post")
                 .sync_detailed(client=admin, body=m.SessionRequest(item_ids=items[:2], n=3, session_id="s-typed")))
    assert isinstance(session, m.RecommendationList) and len(session.items) == 3
    ranked = ok(_mod(c, "api.recommendations.rank_v1_rank_post").sync_detailed(
        client=admin, body=m.RankRequest(user_id=user, item_ids=[*items[:3], "no-such-item"])))
    assert isinstance(ranked, m.RankResponse) and {i.item_id for i in ranked.items[:3]} == set(items[:3])
    assert (ranked.items[3].item_id, ranked.items[3].score, ranked.items[3].reason) == ("no-such-item", None, "unranked")

    # events: one typed event, a typed batch (the anonymous one names its session), with an idempotency key
    post_events = _mod(c, "api.events.post_events_v1_events_post")
    one = m.EventIn(user_id=user, item_id=items[4], event_type=m.EventInEventType.PURCHASE, value=2.0)
    assert isinstance(ok(post_events.sync_detailed(client=admin, body=one), 200, 201, 202), m.EventsAccepted)
    batch = m.EventBatch(events=[m.EventIn(user_id=user, item_id=items[3], event_type=m.EventInEventType.VIEW),
                                 m.EventIn(session_id="s-typed", item_id=items[2], event_type=m.EventInEventType.ADD_TO_CART)])
    accepted = ok(post_events.sync_detailed(client=admin, body=batch, idempotency_key="typed-1"), 200, 201, 202)
    assert accepted.accepted == 2

    # catalogue: items and users
    put_item = _mod(c, "api.items.put_item_v1_items_item_id_put")
    ok(put_item.sync_detailed("typed-sku", client=admin, body=m.ItemIn(title="Mug", categories=["kitchen"], price=4.5)), 200, 201)
    got = ok(_mod(c, "api.items.get_item_v1_items_item_id_get").sync_detailed("typed-sku", client=admin))
    assert got["title"] == "Mug" and got["price"] == 4.5
    patched = ok(_mod(c, "api.items.patch_item_v1_items_item_id_patch").sync_detailed("typed-sku", client=admin, body=m.ItemPatch(available=False)))
    assert patched["available"] is False
    ok(_mod(c, "api.items.delete_item_v1_items_item_id_delete").sync_detailed("typed-sku", client=admin), 200, 204)
    ok(_mod(c, "api.users.put_user_v1_users_user_id_put").sync_detailed("typed-user", client=admin, body=m.UserIn()), 200, 201)
    assert ok(_mod(c, "api.users.get_user_v1_users_user_id_get").sync_detailed("typed-user", client=admin))["user_id"] == "typed-user"
    ok(_mod(c, "api.users.delete_user_v1_users_user_id_delete").sync_detailed("typed-user", client=admin), 200, 202, 204)

    # models, merchandising, online measurement, operations
    models = ok(_mod(c, "api.models.list_models_v1_models_get").sync_detailed(client=admin))
    assert isinstance(models, m.ModelsResponse) and models.serving and models.versions
    assert isinstance(ok(_mod(c, "api.models.refresh_v1_models_refresh_post").sync_detailed(client=admin)), m.ModelsResponse)
    spec = m.PutPlacementV1PlacementsNamePutPlacementSpec(n=3)
    placed = ok(_mod(c, "api.placements.put_placement_v1_placements_name_put").sync_detailed("home", client=admin, body=spec), 200, 201)
    assert isinstance(placed, m.PlacementOut) and placed.name == "home"
    assert "home" in {p.name for p in ok(_mod(c, "api.placements.list_placements_v1_placements_get").sync_detailed(client=admin)).placements}
    assert ok(_mod(c, "api.placements.get_placement_v1_placements_name_get").sync_detailed("home", client=admin)).spec.n == 3
    plist = ok(_mod(c, "api.placements.placement_recommendations_v1_placements_name_recommendations_get")
               .sync_detailed("home", client=admin, user_id=user))
    assert isinstance(plist, m.PlacementList) and plist.placement == "home" and len(plist.items) == 3
    ok(_mod(c, "api.placements.delete_placement_v1_placements_name_delete").sync_detailed("home", client=admin), 200, 204)
    blocked = ok(_mod(c, "api.placements.put_blocklist_v1_blocklist_put").sync_detailed(client=admin, body=m.Blocklist(item_ids=[items[1]])))
    assert blocked.item_ids == [items[1]]
    assert ok(_mod(c, "api.placements.get_blocklist_v1_blocklist_get").sync_detailed(client=admin)).item_ids == [items[1]]
    check = ok(_mod(c, "api.placements.check_rule_v1_rules_check_post").sync_detailed(client=admin, body=m.RuleCheck(rule="price < 10")))
    assert isinstance(check, m.RuleCheckOut) and check.valid
    ok(_mod(c, "api.online.get_kpis_v1_kpis_get").sync_detailed(client=admin))
    # experiments: create over a second (unpromoted) version, list, show, promote refused (no winner yet), stop
    from scalerec.training.pipeline import TrainOptions, train

    treatment = train(api.settings, TrainOptions(models=["itemknn"], trials=1, promote=False)).version.version
    body = m.ExperimentIn(name="typed-exp", variants=[m.VariantIn(name="control", version="production", weight=0.5),
                                                      m.VariantIn(name="treatment", version=treatment, weight=0.5)])
    created = ok(_mod(c, "api.online.create_v1_experiments_post").sync_detailed(client=admin, body=body), 201)
    assert created["name"] == "typed-exp"
    listed = ok(_mod(c, "api.online.list_experiments_v1_experiments_get").sync_detailed(client=admin))
    assert "typed-exp" in str(listed)
    assert ok(_mod(c, "api.online.show_v1_experiments_name_get").sync_detailed("typed-exp", client=admin))
    no_winner = _mod(c, "api.online.promote_v1_experiments_name_promote_winner_post").sync_detailed(
        "typed-exp", client=admin, body=m.PromoteIn())
    assert int(no_winner.status_code) == 409 and isinstance(no_winner.parsed, m.ErrorResponse), no_winner.content[:300]
    stopped = ok(_mod(c, "api.online.stop_v1_experiments_name_stop_post").sync_detailed("typed-exp", client=admin))
    assert stopped["name"] == "typed-exp"
    anonymous = c.Client(base_url=url)
    for name in ("live_v1_health_live_get", "ready_v1_health_ready_get", "prometheus_v1_metrics_get"):
        ok(_mod(c, f"api.operations.{name}").sync_detailed(client=anonymous))


def test_generated_client_parses_every_error_into_the_one_error_class(live, client_pkg) -> None:  # noqa: ANN001
    api, url = live
    c = client_pkg
    m = _mod(c, "models")
    user = str(api.service.live.model.user_ids[0])
    read = c.AuthenticatedClient(base_url=url, token=api.keys["read"])
    wrong = c.AuthenticatedClient(base_url=url, token="sk-not-a-key")
    recs = _mod(c, "api.recommendations.user_recommendations_v1_users_user_id_recommendations_get")
    similar = _mod(c, "api.recommendations.similar_items_v1_items_item_id_similar_get")
    post_events = _mod(c, "api.events.post_events_v1_events_post")
    event = m.EventIn(user_id=user, item_id="i", event_type=m.EventInEventType.VIEW)
    cases = [
        (recs.sync_detailed(user, client=read, n=0), 422, "n must be an integer between 1 and 500"),
        (similar.sync_detailed("no-such-item", client=read), 404, "no-such-item"),
        (recs.sync_detailed(user, client=wrong), 401, ""),
        (post_events.sync_detailed(client=read, body=event), 403, ""),
    ]
    for resp, status, says in cases:
        assert int(resp.status_code) == status, (status, resp.content)
        assert isinstance(resp.parsed, m.ErrorResponse), type(resp.parsed)
        assert isinstance(resp.parsed.error, m.ErrorBody) and resp.parsed.error.type_ and says in resp.parsed.error.message
    # the same failures through the generated error class only: no second error model to handle
    assert not hasattr(m, "Error")
