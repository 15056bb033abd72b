"""The compiled ranker (lleaves, the fast-ranker extra; installed with dev): `scalerec train` writes
it into the version, serving uses it, its scores equal LightGBM's on served requests' features, and
a version without a usable file is scored by LightGBM."""

from __future__ import annotations

import json
import shutil

import numpy as np

from scalerec.ranking.compiled import FILE, META, load_predictor
from scalerec.ranking.ranker import DIR, request_context

NOW = 1_733_100_000 * 1_000_000


def _features(app, rows):
    st = app.service.live.model
    b = app.service.ranking.bundle(st)
    tb, cfg = b.tables, app.settings.ranking
    out = []
    for row in rows:
        allowed = np.ones(st.n_items, bool)
        allowed[b.asof.seen[row].indices] = False
        ids, scores = st.retriever.search(st.retriever.user_query(row), cfg.cf_candidates, allowed)
        ctx = request_context({"weather": "rain", "temp_c": "8"}, b.world, NOW)
        cand = tb.candidates(cfg, row, np.asarray(ids, np.int64), np.asarray(scores, np.float32),
                             tb.seeds(row, np.zeros(0, np.int64)), allowed, NOW, int(ctx["weather"][0]))
        out.append(tb.features(cand, row, ctx))
    return b, out


def test_training_compiles_and_serving_scores_like_lightgbm(app) -> None:
    root = app.settings.data.dir / "models" / app.service.live.model.version / DIR
    meta = json.loads((root / META).read_text())
    assert meta["status"] == "compiled" and meta["target_cpu"] == "x86-64" and (root / FILE).stat().st_size > 0
    b, xs = _features(app, range(0, 300, 20))
    assert b.compiled
    for x in xs:
        np.testing.assert_allclose(b.predict(x), b.booster.predict(x, num_threads=1), rtol=1e-9, atol=1e-12)
    assert app.get(f"/v1/users/{app.service.live.model.user_ids[7]}/recommendations?n=10").status_code == 200


def test_without_a_usable_compiled_file_lightgbm_scores(app, tmp_path) -> None:
    root = app.settings.data.dir / "models" / app.service.live.model.version / DIR
    copy = tmp_path / "ranking"
    shutil.copytree(root, copy)
    assert load_predictor(copy) is not None
    meta = json.loads((copy / META).read_text())
    (copy / META).write_text(json.dumps({**meta, "machine": "aarch64"}))  # compiled on another architecture
    assert load_predictor(copy) is None
    (copy / META).write_text(json.dumps(meta))
    (copy / FILE).write_bytes(b"not a shared object")  # a damaged file (LLVM would abort the process on it)
    assert load_predictor(copy) is None
    (copy / FILE).unlink()
    assert load_predictor(copy) is None
