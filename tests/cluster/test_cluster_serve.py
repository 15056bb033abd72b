"""Serving on Ray Serve (two replicas on the two-node cluster): the single-machine HTTP tests, autoscaling
settings, and a killed replica replaced while the other keeps answering."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

import test_errors as error_tests
import test_recommendations as rec_tests
from _ray_cluster import ray_cluster  # noqa: F401  (fixture)
from _serving_fixtures import Api, base_store  # noqa: F401  (fixture)
from scalerec.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The single-machine server's tests that only read (writes and hot swap are covered there: every
# replica runs that same service code over the shared data directory).
SHARED_TESTS = [
    (rec_tests.test_known_user_gets_exactly_n_model_items_with_reasons, {}),
    (rec_tests.test_exclude_seen_drops_history_and_can_be_turned_off, {}),
    (rec_tests.test_category_and_price_filters_keep_exactly_n, {}),
    (rec_tests.test_available_only_default_and_off, {}),
    (rec_tests.test_max_per_category, {}),
    (rec_tests.test_boost_pins_items_first, {}),
    (rec_tests.test_unknown_user_gets_trending_said_so, {}),
    (rec_tests.test_similar_items_never_itself_and_filters, {}),
    (rec_tests.test_popular_and_trending_order_and_category, {}),
    (rec_tests.test_rank_orders_the_callers_list, {}),
    (rec_tests.test_session_recommendations_from_touched_items, {}),
    (rec_tests.test_n_bounds_are_honoured, {"which": "all"}),
    (error_tests.test_unknown_item_is_404, {}),
    (error_tests.test_n_out_of_range_or_wrong_type_is_422, {"n": "501"}),
    (error_tests.test_bad_filters_are_422, {"query": "min_price=10&max_price=5"}),
    (error_tests.test_malformed_json_is_400, {}),
    (error_tests.test_wrong_types_are_422_with_field_details, {}),
    (error_tests.test_missing_invalid_and_underpowered_keys, {}),
    (error_tests.test_unknown_route_and_method, {}),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_api(ray_cluster, base_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:  # noqa: F811
    import httpx

    from scalerec.cluster.serve import autoscaling_config, deploy, undeploy
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.service import RecommendService

    d = tmp_path_factory.mktemp("ray-serve") / "data"
    shutil.copytree(base_store, d)
    settings = Settings(
        data={"dir": d},
        cluster={"serve": {"min_replicas": 2, "max_replicas": 3, "target_ongoing_requests": 3, "replica_cpus": 0.25}},
    )
    store = ApiKeyStore.from_settings(settings)
    keys = {role: store.create(role, f"test-{role}")[0] for role in ("read", "write", "admin")}
    url = deploy(settings, host="127.0.0.1", port=_free_port())
    client = httpx.Client(base_url=url, timeout=30)
    # A local service over the same directory, only to look up what the answers should be.
    service = RecommendService(settings)
    api = Api(client, service, settings, keys)
    api.url = url  # type: ignore[attr-defined]
    api.autoscaling = autoscaling_config(settings)  # type: ignore[attr-defined]
    yield api
    client.close()
    service.close()
    undeploy()


@pytest.mark.parametrize("test,kwargs", SHARED_TESTS, ids=[t.__name__ for t, _ in SHARED_TESTS])
def test_same_api_as_the_single_machine_server(ray_api, test, kwargs) -> None:
    test(ray_api, **kwargs)


def _deployment_status() -> Any:
    from ray import serve

    from scalerec.cluster.serve import APP_NAME, DEPLOYMENT_NAME

    return serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]


def test_autoscaling_bounds_come_from_settings(ray_api) -> None:
    from ray import serve

    from scalerec.cluster.serve import APP_NAME, DEPLOYMENT_NAME

    assert ray_api.autoscaling == {
        "min_replicas": 2, "initial_replicas": 2, "max_replicas": 3, "target_ongoing_requests": 3
    }
    status = _deployment_status()
    assert status.replica_states.get("RUNNING") == 2
    details = serve.context._get_global_client().get_serve_details()
    config = details["applications"][APP_NAME]["deployments"][DEPLOYMENT_NAME]["deployment_config"]
    scaling = config["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (2, 3, 3)
    assert config["ray_actor_options"]["num_cpus"] == 0.25


def test_a_killed_replica_is_replaced_while_the_other_answers(ray_api) -> None:
    import ray

    from scalerec.cluster.serve import replica_names

    user = rec_tests._known_user(ray_api)
    before = replica_names()
    assert len(before) == 2
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    codes = [ray_api.get(f"/v1/users/{user}/recommendations?n=5").status_code for _ in range(40)]
    assert codes.count(200) == len(codes), f"requests failed after the kill: {codes}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = replica_names()
        if len(now) == 2 and before[0] not in now and _deployment_status().replica_states.get("RUNNING") == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the killed replica was not replaced: {replica_names()}")
    assert ray_api.get(f"/v1/users/{user}/recommendations?n=5").status_code == 200
