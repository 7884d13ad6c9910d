"""Metric functions on numpy arrays (shapes in each docstring).

Conventions:
  U  evaluated users (one ranked list each), K  list length, N  candidates,
  B  bootstrap resamples, P  scored pairs.
  A ranked list is summarised by a boolean `hits` matrix [U, K]: hits[u, i] says
  whether the i-th recommendation of user u (0-based) is relevant to u; and
  `num_relevant` [U], how many relevant candidates u has in total (some may lie
  beyond K). Per-user metrics return [U] float64 arrays; averaging them (and
  bootstrap intervals) happens in `bootstrap_*`.

The bootstrap is written out rather than `scipy.stats.bootstrap`: every metric of
every recommender is resampled with the SAME user multiplicities (one [B, U]
`bootstrap_counts` matrix, drawn once), so differences and lifts are paired by
user across calls, and each resampled mean is one product counts @ per_user
(ratio metrics resample numerator and denominator together, `ratio_of_sums`).
scipy's bootstrap pairs only the samples of one call, draws and materialises its
resampled data again for every statistic, and adds nothing the percentile
interval here needs.
"""

from typing import Dict, Optional

import numpy as np
from scipy import sparse as _sparse
from scipy import stats as _stats


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve, ties counted half (Mann-Whitney U / (n_pos * n_neg)).

  Args:
    labels: [n] 0/1 (or bool).
    scores: [n] real scores; higher means more likely positive.
  Returns:
    AUC in [0, 1]; NaN when one class is absent.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _stats.rankdata(scores)  # average ranks for ties
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy  -[y log p + (1 - y) log(1 - p)], p clipped to [eps, 1 - eps].

  Args:
    labels: [n] 0/1.  probabilities: [n] P(label = 1).
  """
  y = np.asarray(labels, np.float64)
  p = np.clip(np.asarray(probabilities, np.float64), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# -- ranked lists -------------------------------------------------------------------

def hit_matrix(top_candidates: np.ndarray, relevant_rows: np.ndarray,
               relevant_candidates: np.ndarray) -> np.ndarray:
  """Marks which recommendations are relevant, without a loop over users.

  Args:
    top_candidates: [U, K] int candidate indices (any value < 0 is padding).
    relevant_rows: [R] int, the list (user) index of each relevant pair.
    relevant_candidates: [R] int, the candidate index of each relevant pair.
  Returns:
    [U, K] bool: hits[u, i] = (u, top_candidates[u, i]) is a relevant pair.
  """
  top = np.asarray(top_candidates, np.int64)
  width = max(int(top.max(initial=0)), int(np.max(relevant_candidates, initial=0))) + 1
  keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * width + top
  relevant = (np.asarray(relevant_rows, np.int64) * width
              + np.asarray(relevant_candidates, np.int64))
  return np.isin(keys, relevant) & (top >= 0)


def count_per_row(rows: np.ndarray, num_rows: int) -> np.ndarray:
  """[num_rows] int64 counts of each row index in `rows` (relevant items per user)."""
  return np.bincount(np.asarray(rows, np.int64), minlength=num_rows).astype(np.int64)


def recall_at_k(hits: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
  """recall@K(u) = |top_K(u) ∩ R(u)| / |R(u)|; NaN for users with R(u) empty.  [U]."""
  found = hits[:, :k].sum(axis=1).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_relevant > 0, found / num_relevant, np.nan)


def hit_rate_at_k(hits: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
  """hit@K(u) = 1[top_K(u) ∩ R(u) ≠ ∅]; NaN for users with R(u) empty.  [U]."""
  return np.where(num_relevant > 0, hits[:, :k].any(axis=1).astype(np.float64), np.nan)


def ndcg_at_k(hits: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
  """Binary-gain NDCG@K per user.  [U].

  DCG@K(u) = sum_{i<K} hits[u, i] / log2(i + 2);
  IDCG@K(u) = sum_{i < min(K, |R(u)|)} 1 / log2(i + 2);
  NDCG = DCG / IDCG, NaN for users with R(u) empty.
  """
  k = min(k, hits.shape[1])
  discounts = 1.0 / np.log2(np.arange(k) + 2.0)
  dcg = hits[:, :k].astype(np.float64) @ discounts
  ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(num_relevant, k)]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_relevant > 0, dcg / ideal, np.nan)


def reciprocal_rank(hits: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
  """RR(u) = 1 / (1 + position of the first hit), 0 when no hit within the list.  [U].

  Averaged over users this is MRR@K for K = hits.shape[1] (lists are truncated,
  so a first hit beyond K counts 0). NaN for users with R(u) empty.
  """
  any_hit = hits.any(axis=1)
  first = np.argmax(hits, axis=1)
  rr = np.where(any_hit, 1.0 / (first + 1.0), 0.0)
  return np.where(num_relevant > 0, rr, np.nan)


def ranks_ties_against(scores: np.ndarray, rows: np.ndarray,
                       candidates: np.ndarray) -> np.ndarray:
  """0-based rank of each relevant pair in its row, every tie ranked ahead of it.  [P].

  rank(r, c) = |{c' != c : scores[r, c'] >= scores[r, c]}|, so a model whose
  scores are all equal ranks every relevant candidate last: ties are never hits.
  Excluded candidates must already be -inf in `scores`.

  Args:
    scores: [B, N] float scores of B lists over N candidates.
    rows: [P] list index of each relevant pair; candidates: [P] its candidate index.
  """
  rows = np.asarray(rows, np.int64)
  own = scores[rows, np.asarray(candidates, np.int64)]
  return (scores[rows] >= own[:, None]).sum(axis=1).astype(np.int64) - 1


def recall_at_k_from_ranks(ranks: np.ndarray, rows: np.ndarray, num_rows: int,
                           k: int) -> np.ndarray:
  """recall@K(u) = |{relevant pairs of u with rank < K}| / |R(u)|; NaN when R(u) empty.  [U].

  The same per-user recall as `recall_at_k`, from ranks (`ranks_ties_against`)
  instead of a hits matrix: [P] ranks, [P] rows -> [num_rows].
  """
  rows = np.asarray(rows, np.int64)
  found = np.bincount(rows[np.asarray(ranks) < k], minlength=num_rows).astype(np.float64)
  num_relevant = count_per_row(rows, num_rows)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_relevant > 0, found / num_relevant, np.nan)


def unmasked_ranks(masked_positions: np.ndarray, positive_rows: np.ndarray,
                   positive_scores: np.ndarray, excluded_rows: np.ndarray,
                   excluded_scores: np.ndarray) -> np.ndarray:
  """Ranks of positives among ALL candidates, from ranks among non-excluded ones.

  Exclusion only removes candidates, so the rank over all candidates is
  rank_all(p) = masked_position(p) + |{excluded e of the same user: score_e > score_p}|.
  This gives TFRS's factorized top-K accuracy (which ranks over the whole corpus)
  from the filtered lists without a second top-K pass.

  Args:
    masked_positions: [P] 0-based position of each positive in its user's filtered
      list, or a value >= K when it is not in the list (its rank is then >= K too).
    positive_rows: [P] user index of each positive; positive_scores: [P].
    excluded_rows: [E] user index of each excluded pair; excluded_scores: [E].
  Returns:
    [P] int64 0-based ranks over all candidates (exact when masked_position < K).
  """
  positive_rows = np.asarray(positive_rows, np.int64)
  excluded_rows = np.asarray(excluded_rows, np.int64)
  # One global ordering of all scores turns "same row and higher score" into a
  # search over combined integer keys: key = row * (n + 1) + score rank.
  scores = np.concatenate([np.asarray(excluded_scores, np.float64),
                           np.asarray(positive_scores, np.float64)])
  rank = np.searchsorted(np.unique(scores), scores)  # equal scores share a rank
  width = np.int64(scores.size + 1)
  excluded_keys = np.sort(excluded_rows * width + rank[:excluded_rows.size])
  positive_rank = rank[excluded_rows.size:]
  # excluded in the same row with rank > positive's: keys in (row*w + r_p, row*w + w).
  upper = np.searchsorted(excluded_keys, positive_rows * width + width - 1, side="right")
  lower = np.searchsorted(excluded_keys, positive_rows * width + positive_rank, side="right")
  return np.asarray(masked_positions, np.int64) + (upper - lower)


def factorized_top_k_accuracy(ranks: np.ndarray, k: int) -> float:
  """TFRS `FactorizedTopK` accuracy: share of positive pairs ranked in the top K.  [P] -> float.

  Averaged over positive interactions (not users) and over the whole corpus
  (nothing excluded), as the TFRS metric is; `ranks` from `unmasked_ranks`.
  """
  ranks = np.asarray(ranks)
  return float(np.mean(ranks < k)) if ranks.size else float("nan")


# -- impression-conditioned: ranking what each user was actually shown ---------------

def rank_within_users(users: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """[P] 0-based rank of each pair among its user's pairs by score (highest first).

  Ties keep input order. Args: users [P] int, scores [P].
  """
  order = np.lexsort((np.arange(users.size), -np.asarray(scores, np.float64), users))
  sorted_users = np.asarray(users)[order]
  ranks = np.empty(users.size, np.int64)
  ranks[order] = np.arange(users.size) - np.searchsorted(sorted_users, sorted_users)
  return ranks


def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                 num_users: int) -> np.ndarray:
  """[U] AUC of each user's own pairs (ties half); NaN without both classes. Mean = GAUC.

  AUC_u = (sum of positives' ascending ranks among u's pairs - n+(n+ + 1)/2) / (n+ n-),
  ranks averaged over ties, all users at once from one ordering of (user, score).
  """
  users = np.asarray(users, np.int64)
  labels = np.asarray(labels).astype(bool)
  dense = np.unique(np.asarray(scores, np.float64), return_inverse=True)[1]
  ranks = _stats.rankdata(users * np.int64(dense.size + 1) + dense)  # average over ties
  n = np.bincount(users, minlength=num_users)
  ranks -= np.r_[0, np.cumsum(n)][users]  # 1-based rank within the user
  n_pos = np.bincount(users, weights=labels, minlength=num_users)
  n_neg = n - n_pos
  rank_sum = np.bincount(users, weights=np.where(labels, ranks, 0.0), minlength=num_users)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where((n_pos > 0) & (n_neg > 0),
                    (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan)


def precision_among_shown(ranks: np.ndarray, users: np.ndarray, labels: np.ndarray,
                          num_users: int, k: int) -> np.ndarray:
  """[U] share of positives among each user's top min(k, n_u) shown pairs; NaN if n_u = 0.

  ranks: [P] from `rank_within_users`; labels [P] 0/1.
  """
  n = np.bincount(users, minlength=num_users)
  top = np.bincount(users, weights=(ranks < k) * np.asarray(labels, np.float64),
                    minlength=num_users)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, top / np.minimum(n, k), np.nan)


def ndcg_among_shown(ranks: np.ndarray, users: np.ndarray, labels: np.ndarray,
                     num_users: int, k: int) -> np.ndarray:
  """[U] binary NDCG@k of each user's shown pairs re-ranked by score; NaN without positives.

  DCG = sum_{rank < k} y / log2(rank + 2); IDCG = the same with the positives first.
  """
  labels = np.asarray(labels, np.float64)
  gain = np.where(ranks < k, labels / np.log2(ranks + 2.0), 0.0)
  dcg = np.bincount(users, weights=gain, minlength=num_users)
  n_pos = np.bincount(users, weights=labels, minlength=num_users).astype(np.int64)
  ideal = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))][np.minimum(n_pos, k)]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n_pos > 0, dcg / ideal, np.nan)


# -- exposure (diversity / fairness) ------------------------------------------------

def exposure_counts(top_candidates: np.ndarray, num_candidates: int, k: int) -> np.ndarray:
  """[N] how many of the U lists show each candidate in their first K slots."""
  top = np.asarray(top_candidates)[:, :k].ravel()
  return np.bincount(top[top >= 0], minlength=num_candidates).astype(np.float64)


def catalogue_coverage(exposure: np.ndarray) -> np.ndarray:
  """Share of the catalogue shown at least once: |{c: x_c > 0}| / N.  [..., N] -> [...]."""
  return np.mean(np.asarray(exposure) > 0, axis=-1)


def gini(exposure: np.ndarray) -> np.ndarray:
  """Gini coefficient of exposure counts over ALL candidates (zeros included).  [..., N] -> [...].

  With x sorted ascending and i = 1..N:  G = 2 sum_i i x_(i) / (N sum_i x_i) - (N + 1) / N.
  0 = everybody shown equally often, -> 1 = all exposure on one candidate.
  """
  x = np.sort(np.asarray(exposure, np.float64), axis=-1)
  n = x.shape[-1]
  total = x.sum(axis=-1)
  weighted = x @ np.arange(1, n + 1, dtype=np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, 2 * weighted / (n * total) - (n + 1) / n, np.nan)


def top_popular_mask(popularity: np.ndarray, top_fraction: float = 0.01) -> np.ndarray:
  """[N] bool: the ceil(top_fraction * N) most popular candidates (ties broken by index)."""
  popularity = np.asarray(popularity)
  n_top = max(1, int(np.ceil(top_fraction * popularity.size)))
  mask = np.zeros(popularity.size, bool)
  mask[np.argsort(-popularity, kind="stable")[:n_top]] = True
  return mask


def popular_share(exposure: np.ndarray, popular: np.ndarray) -> np.ndarray:
  """Share of recommendation slots that go to the `popular` candidates.  [..., N] -> [...]."""
  exposure = np.asarray(exposure, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return exposure[..., popular].sum(axis=-1) / exposure.sum(axis=-1)


# -- bootstrap over users -----------------------------------------------------------

def bootstrap_counts(num_users: int, num_resamples: int, seed: int = 0) -> np.ndarray:
  """[B, U] float32 multiplicities of each user in B resamples of U users with replacement.

  One matrix serves every metric and every recommender, so intervals of
  differences and lifts are paired by user.
  """
  rng = np.random.default_rng(seed)
  return rng.multinomial(num_users, np.full(num_users, 1.0 / num_users),
                         size=num_resamples).astype(np.float32)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
  """[2] (low, high) percentile interval of bootstrap samples (NaNs ignored)."""
  alpha = (1 - level) / 2
  samples = np.asarray(samples, np.float64)
  samples = samples[np.isfinite(samples)]
  if samples.size == 0:
    return np.array([np.nan, np.nan])
  return np.quantile(samples, [alpha, 1 - alpha])


def ratio_of_sums(numerators: np.ndarray, denominators: np.ndarray,
                  counts: Optional[np.ndarray] = None) -> np.ndarray:
  """sum_u w_u n_u / sum_u w_u d_u for weights w = 1 (scalar) or each row of `counts` ([B]).

  With d_u = 1[u is evaluated] and n_u = metric(u) (0 where not evaluated) it is the
  mean over evaluated users; with n_u, d_u = successes and trials of u it is a
  pooled rate. A segment is a 0/1 mask multiplied into both.
  """
  n = np.nan_to_num(np.asarray(numerators, np.float64))
  d = np.asarray(denominators, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    if counts is None:
      return np.float64(n.sum() / d.sum()) if d.sum() > 0 else np.float64(np.nan)
    # float32 products keep the [B, U] matrix as it is (no copy) and use BLAS.
    sums = np.asarray(counts, np.float32) @ np.stack([n, d], axis=1).astype(np.float32)
    return sums[:, 0].astype(np.float64) / sums[:, 1]


def estimate(value: float, samples: np.ndarray, level: float = 0.95,
             **extra) -> Dict[str, object]:
  """{"value", "ci": [low, high]} (+ extra fields) for a JSON report."""
  low, high = percentile_interval(samples, level)
  out = {"value": _finite(value), "ci": [_finite(low), _finite(high)]}
  out.update(extra)
  return out


def _finite(x) -> Optional[float]:
  x = float(x)
  return x if np.isfinite(x) else None


def bootstrap_mean(per_user: np.ndarray, counts: np.ndarray,
                   mask: Optional[np.ndarray] = None, level: float = 0.95) -> Dict[str, object]:
  """Mean of a per-user metric over users where it is defined (and `mask`), with CI.

  Args:
    per_user: [U] metric values, NaN where undefined for that user.
    counts: [B, U] from `bootstrap_counts`.
    mask: optional [U] bool segment.
  """
  defined = np.isfinite(per_user) & (True if mask is None else np.asarray(mask, bool))
  num, den = np.where(defined, per_user, 0.0), defined.astype(np.float64)
  return estimate(ratio_of_sums(num, den), ratio_of_sums(num, den, counts), level,
                  users=int(defined.sum()))


def bootstrap_ratio(numerators: np.ndarray, denominators: np.ndarray, counts: np.ndarray,
                    mask: Optional[np.ndarray] = None, level: float = 0.95) -> Dict[str, object]:
  """Pooled rate sum n_u / sum d_u over users (in `mask`), with CI.  Inputs [U], counts [B, U]."""
  keep = np.ones_like(denominators, bool) if mask is None else np.asarray(mask, bool)
  num, den = np.where(keep, numerators, 0.0), np.where(keep, denominators, 0.0)
  return estimate(ratio_of_sums(num, den), ratio_of_sums(num, den, counts), level,
                  users=int((keep & (np.asarray(denominators) > 0)).sum()),
                  trials=float(np.sum(den)))


def bootstrap_lift(per_user_model: np.ndarray, per_user_baseline: np.ndarray,
                   counts: np.ndarray, mask: Optional[np.ndarray] = None,
                   level: float = 0.95) -> Dict[str, object]:
  """Relative lift mean(model) / mean(baseline) - 1 over the same users, paired CI.

  Both means use the users where both metrics are defined, and every resample
  reweights the same users in both, so the interval reflects the paired
  difference rather than two independent noises.  Inputs [U], counts [B, U].
  """
  defined = np.isfinite(per_user_model) & np.isfinite(per_user_baseline)
  if mask is not None:
    defined &= np.asarray(mask, bool)
  den = defined.astype(np.float64)
  a = np.where(defined, per_user_model, 0.0)
  b = np.where(defined, per_user_baseline, 0.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    value = ratio_of_sums(a, den) / ratio_of_sums(b, den) - 1
    samples = ratio_of_sums(a, den, counts) / ratio_of_sums(b, den, counts) - 1
  return estimate(value, samples, level, users=int(defined.sum()),
                  difference=_finite(ratio_of_sums(a, den) - ratio_of_sums(b, den)))


def bootstrap_ratio_lift(num_model: np.ndarray, den_model: np.ndarray, num_base: np.ndarray,
                         den_base: np.ndarray, counts: np.ndarray,
                         mask: Optional[np.ndarray] = None,
                         level: float = 0.95) -> Dict[str, object]:
  """Relative lift of two pooled rates, (sum n_a / sum d_a) / (sum n_b / sum d_b) - 1, paired CI.

  Each resample reweights the same users in both rates (counts [B, U]); inputs [U].
  """
  keep = np.ones_like(den_model, bool) if mask is None else np.asarray(mask, bool)
  a = [np.where(keep, x, 0.0) for x in (num_model, den_model)]
  b = [np.where(keep, x, 0.0) for x in (num_base, den_base)]
  with np.errstate(invalid="ignore", divide="ignore"):
    value = ratio_of_sums(*a) / ratio_of_sums(*b) - 1
    samples = ratio_of_sums(*a, counts) / ratio_of_sums(*b, counts) - 1
  return estimate(value, samples, level, users=int((keep & ((a[1] > 0) | (b[1] > 0))).sum()),
                  difference=_finite(ratio_of_sums(*a) - ratio_of_sums(*b)))


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """AUC with per-pair weights (multiplicities), ties counted half; vectorised over rows.

  AUC = sum_{i pos, j neg} w_i w_j (1[s_i > s_j] + 1/2 1[s_i = s_j]) / (W_pos W_neg),
  computed from one cumulative sum of negative weight along the score order.
  Args:
    labels: [n] 0/1; scores: [n]; weights: [n] or [B, n] (integer-valued for exact sums).
  Returns:
    scalar or [B] AUCs (NaN when a class has zero weight).
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  order = np.argsort(scores, kind="stable")
  sorted_scores, sorted_labels = scores[order], labels[order]
  n = scores.size
  new_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
  ends = np.flatnonzero(np.r_[new_group[1:], True])  # last index of each tie group
  group_end = ends[np.cumsum(new_group) - 1]
  # float32 is exact for integer multiplicities up to 2^24 and halves the memory traffic.
  w = np.atleast_2d(np.asarray(weights))[:, order].astype(np.float32)
  cum_neg = np.zeros((w.shape[0], n + 1), np.float32)
  np.cumsum(w * ~sorted_labels, axis=1, out=cum_neg[:, 1:])
  pos = np.flatnonzero(sorted_labels)
  below = cum_neg[:, group_start[pos]]
  tied = cum_neg[:, group_end[pos] + 1] - below
  total_pos, total_neg = w[:, pos].sum(axis=1), cum_neg[:, -1]
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = ((w[:, pos] * (below + 0.5 * tied)).sum(axis=1, dtype=np.float64)
           / (total_pos.astype(np.float64) * total_neg))
  return auc if np.ndim(weights) == 2 else auc[0]


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, pair_users: np.ndarray,
                  counts: np.ndarray, mask: Optional[np.ndarray] = None,
                  level: float = 0.95, chunk: int = 64) -> Dict[str, object]:
  """Like-vs-pass AUC of scored pairs with a CI from resampling their users.

  Args:
    labels, scores: [P]; pair_users: [P] user index of each pair; counts: [B, U].
    mask: optional [U] bool segment of users whose pairs count.
  """
  keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask, bool)[pair_users]
  labels, scores, pair_users = (np.asarray(a)[keep] for a in (labels, scores, pair_users))
  value = roc_auc(labels, scores)
  samples = np.concatenate([
      weighted_auc(labels, scores, counts[i:i + chunk][:, pair_users])
      for i in range(0, counts.shape[0], chunk)]) if labels.size else np.array([])
  out = estimate(value, samples, level, pairs=int(labels.size),
                 users=int(np.unique(pair_users).size))
  positive = np.asarray(labels, bool)
  if not positive.size:
    out["reason"] = "no eval swipes"
  elif positive.all():
    out["reason"] = "no passes among the eval swipes (implicit feedback): AUC needs both labels"
  elif not positive.any():
    out["reason"] = "no likes among the eval swipes"
  return out


def bootstrap_exposure(top_candidates: np.ndarray, k: int, num_candidates: int,
                       popular: np.ndarray, counts: np.ndarray, mask: Optional[np.ndarray] = None,
                       level: float = 0.95, chunk: int = 64) -> Dict[str, Dict[str, object]]:
  """Catalogue coverage@K, exposure Gini@K and top-popular share@K of a set of lists, with CIs.

  These statistics depend on how many lists are pooled (coverage grows with
  users), and a resample holds only ~63 % distinct users, so the bootstrap
  distribution is shifted; the interval is its spread re-centred on the
  estimate: [x + q_low - mean*, x + q_high - mean*].

  Args:
    top_candidates: [U, K'] candidate indices, K' >= k (rows of users outside `mask`
      are ignored); popular: [N] bool from `top_popular_mask`; counts: [B, U].
  """
  users = np.arange(top_candidates.shape[0]) if mask is None else np.flatnonzero(mask)
  top = np.asarray(top_candidates)[users, :k]
  rows = np.repeat(np.arange(users.size), top.shape[1])
  cols = top.ravel()
  keep = cols >= 0
  incidence = _sparse.csr_matrix((np.ones(int(keep.sum()), np.float32),
                                  (rows[keep], cols[keep])), shape=(users.size, num_candidates))
  point = np.asarray(incidence.sum(axis=0)).ravel().astype(np.float64)
  by_candidate = incidence.T.tocsr()  # [N, U]: sparse @ dense resample weights is fast
  functions = {"coverage": catalogue_coverage, "gini": gini,
               "top1pct_share": lambda x: popular_share(x, popular)}
  samples = {name: [] for name in functions}
  for i in range(0, counts.shape[0], chunk):
    exposure = (by_candidate @ np.asarray(counts[i:i + chunk][:, users], np.float32).T).T
    for name, fn in functions.items():
      samples[name].append(fn(exposure))
  out = {}
  for name, fn in functions.items():
    value = float(fn(point))
    s = np.concatenate(samples[name])
    interval = np.clip(value + s - np.nanmean(s), 0.0, 1.0) if s.size else s
    out[name] = estimate(value, interval, level)
  return out
