"""The ranking stage: item content vectors, candidate sources, point-in-time features and a
LightGBM LambdaRank ranker trained after the candidate models and served in the rerank slot.

- :mod:`~scalerec.ranking.content`: TF-IDF item vectors (cold start, content similarity);
- :mod:`~scalerec.ranking.features`: the event frame and features as of a time (no look-ahead);
- :mod:`~scalerec.ranking.candidates`: candidate sources (CF, co-occurrence, segment, content);
- :mod:`~scalerec.ranking.ranker`: the training step of ``scalerec train`` and its gate;
- :mod:`~scalerec.ranking.stage`: the serving rerank stage and cold-start lists;
- :mod:`~scalerec.ranking.segments`: metrics per customer group.

See docs/ranking.md.
"""
