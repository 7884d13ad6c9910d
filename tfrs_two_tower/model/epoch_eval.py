"""Full-corpus retrieval metrics at epoch end (not per step, not FactorizedTopK).

recall@K: over the eval likes (label 1) whose candidate is in the corpus, the
share whose candidate ranks in the top K of q . c over ALL candidates (brute
force, nothing excluded). AUC: like-vs-pass ROC AUC of q . c over every eval
swipe. Recall is also split by candidate popularity (train interactions):
"tail" = the least popular third of the corpus, "head" = the most popular third.

Cost at scale: ranking L likes against N candidates takes L x N x d
multiply-adds and a [block, N] float32 score block. The block is sized so that
it stays under `SCORE_BLOCK_BYTES` (at 1M candidates ~64 rows, not 4096 rows =
16 GB), and when the eval split has more than `max_recall_likes` likes, recall
is computed on a fixed random sample of that many (seeded; the standard error
of a recall estimate from 100k likes is < 0.002). AUC uses every swipe.
"""

from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.model import towers

POPULARITY_GROUPS = ("tail", "mid", "head")
SCORE_BLOCK_BYTES = 256 << 20
MAX_RECALL_LIKES = 100_000


class RetrievalEvaluator:
  """Holds the eval swipes and the corpus in memory; call with the two towers."""

  def __init__(self, dataset: reader.DatasetDir, ks: Sequence[int] = (10, 50, 100),
               split: str = "eval", batch_size: int = 4096,
               max_recall_likes: int = MAX_RECALL_LIKES,
               score_block_bytes: int = SCORE_BLOCK_BYTES):
    self.ks = tuple(sorted(int(k) for k in ks))
    self.batch_size = batch_size
    self.max_recall_likes = max_recall_likes
    self.score_block_bytes = score_block_bytes
    self._calls = {}
    self.corpus = reader.read_entities(dataset, "candidate")
    self.swipes = reader.read_interactions(dataset, split)
    self.candidate_ids = self.corpus["candidate_id"].astype(str)
    row = {c: i for i, c in enumerate(self.candidate_ids)}
    self.swipe_rows = np.array([row.get(c, -1) for c in self.swipes[features_lib.CANDIDATE_ID]])
    counts = dataset.candidate_counts()
    popularity = dict(zip(counts["candidate_id"].astype(str), counts["interactions"]))
    pop = np.array([popularity.get(c, 0) for c in self.candidate_ids], np.float64)
    order = np.argsort(pop, kind="stable")
    self.popularity_group = np.empty(len(pop), np.int64)
    self.popularity_group[order] = np.arange(len(pop)) * len(POPULARITY_GROUPS) // max(len(pop), 1)

  def _embed(self, tower: towers.Tower, table: Dict[str, np.ndarray], side: str) -> np.ndarray:
    keys = [spec["key"] for spec in tower.preprocessing.specs]
    if id(tower) not in self._calls:  # one traced function per tower, reused every epoch
      self._calls[id(tower)] = tf.function(lambda f: tf.cast(tower(f), tf.float32),
                                            reduce_retracing=True)
    call = self._calls[id(tower)]
    n = len(table[f"{side}_id"])
    out = [call({k: tf.constant(table[k][i:i + self.batch_size]) for k in keys}).numpy()
           for i in range(0, n, self.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

  def candidate_embeddings(self, candidate_tower: towers.Tower) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [N], embeddings [N, d]) of the whole corpus."""
    return self.candidate_ids, self._embed(candidate_tower, self.corpus, "candidate")

  def __call__(self, query_tower: towers.Tower, candidate_tower: towers.Tower,
               candidate_embeddings: np.ndarray = None) -> Dict[str, float]:
    if candidate_embeddings is None:
      _, candidate_embeddings = self.candidate_embeddings(candidate_tower)
    q = self._embed(query_tower, self.swipes, "query")
    rows = self.swipe_rows
    labels = self.swipes[features_lib.LABEL].astype(np.int64)
    known = rows >= 0
    pair = np.einsum("nd,nd->n", q[known], candidate_embeddings[rows[known]])
    out = {"auc": metrics.roc_auc(labels[known], pair)}
    likes = np.flatnonzero(known & (labels == 1))
    if len(likes) > self.max_recall_likes:
      likes = np.sort(np.random.default_rng(0).choice(likes, self.max_recall_likes,
                                                      replace=False))
    ranks = np.empty(len(likes), np.int64)
    corpus = tf.constant(candidate_embeddings)
    block = int(max(1, min(self.batch_size,
                           self.score_block_bytes // (4 * max(len(candidate_embeddings), 1)))))
    for start in range(0, len(likes), block):
      part = likes[start:start + block]
      scores = tf.matmul(tf.constant(q[part]), corpus, transpose_b=True).numpy()
      own = scores[np.arange(len(part)), rows[part]]
      ranks[start:start + len(part)] = (scores > own[:, None]).sum(axis=1)
    groups = self.popularity_group[rows[likes]]
    for k in self.ks:
      hit = ranks < k
      out[f"recall@{k}"] = float(hit.mean()) if len(hit) else float("nan")
      for g, name in enumerate(POPULARITY_GROUPS):
        mask = groups == g
        out[f"recall@{k}_{name}"] = float(hit[mask].mean()) if mask.any() else float("nan")
    out["eval_likes"] = int(len(likes))  # the ones recall was computed on
    return out
