"""TF-IDF item content vectors: text of title, description, categories and attributes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scalerec.ranking.content import ContentIndex, item_texts, top_neighbours


def _items() -> pa.Table:
    return pa.table({
        "item_id": ["r1", "r2", "k1", "k2"],
        "title": ["yellow raincoat", "rain jacket", "kitchen knife", None],
        "description": ["A waterproof raincoat by Nordwind", "waterproof jacket", "steel knife by Cookly", "A pan"],
        "categories": [["rainwear", "clothing"], ["rainwear", "clothing"], ["kitchen", "home"], ["kitchen", "home"]],
        "attributes": pa.array([[("brand", "Nordwind")], [("brand", "Nordwind")], [("brand", "Cookly")], None],
                               pa.map_(pa.string(), pa.string())),
    })


def test_text_has_every_field() -> None:
    texts = item_texts(_items()).to_pylist()
    assert "raincoat" in texts[0] and "rainwear" in texts[0] and "Nordwind" in texts[0]
    assert texts[3].strip().endswith("home")  # null title and attributes are skipped


def test_neighbours_by_content_and_new_text(tmp_path) -> None:
    table = _items()
    index = ContentIndex.fit(item_texts(table))
    x = index.transform(item_texts(table))
    ids, scores = top_neighbours(x, x, 1, exclude_self=True)
    assert ids[:, 0].tolist() == [1, 0, 3, 2]
    index.save(tmp_path / "c")
    again = ContentIndex.load(tmp_path / "c")
    new = again.transform(["waterproof rain poncho rainwear"])  # imported after fitting
    sim = (x @ new.T).toarray().ravel()
    assert sim[:2].min() > sim[2:].max()
    np.testing.assert_allclose(np.asarray(new.multiply(new).sum()), 1.0, rtol=1e-5)  # unit rows
    assert again.transform(["zzz qqq"]).nnz == 0  # no known word: no vector
