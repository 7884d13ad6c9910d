"""The like-vs-pass residual: who likes whom among the profiles shown, fitted after training.

The retrieval softmax learns P(shown and liked), i.e. mostly the logging feed's
exposure; what a user likes among the profiles they were shown, beyond what the
profile features say, is collaborative (a hidden taste and a hidden style that only
the ids carry: docs/training.md, "Oracle headroom"). With the towers fixed, this
module fits on the swipes (like 1, pass 0, the swipe's weight) the logistic model

  z(u, v) = a * cos_uv + b_0 + b_u + b_v + p_u . s_v        p_u, s_v in R^r

by L-BFGS (scipy) on the weighted mean log loss plus
l2 * (sum_u (|e_u|^2 + b_u^2) / n_q + sum_v (|e_v|^2 + b_v^2) / n_c) (a Gaussian prior
on the rows' own parts, e below; n_q, n_c the table sizes). b_u (how readily u likes)
moves no user's own ranking; it moves the pair score across users: the AUC over all
swipes, the calibrated P(like) and the reciprocal match score P(u likes v) P(v likes u).
u and v are rows of the id features' embedding tables (their vocabulary index); a query's first
`new_user_swipes` swipes are left out (they train the towers' new-user path), and so
are the swipes of users and on profiles unseen in training (their id's OOV row), which get
b = 0, e = 0 (`Residual.query_table`, `candidate_table`): the towers, b_v and the feature
maps below rank them. The rank and the penalty are chosen from RANKS x L2_GRID by the
validation swipes' log loss (fits on train), and the chosen model is refitted on
train + validation.

Profile features can inform the factors (a linear map shared by all rows, like
LightFM's feature embeddings): with g_u, f_v the sides' feature vectors (`Features`: per
categorical or multi-categorical feature, the count of each token over sqrt(the number of
tokens), TF's "sqrtn" combiner),

  p_u = e_u + V g_u,   s_v = e_v + W f_v       V [r, k_q], W [r, k_c]

with the penalty feature_l2 * (sum of V's and W's squared entries). `choose` adds feature
groups greedily (feature_l2 = FEATURE_L2) while the validation log loss falls, so a data set
whose features say nothing beyond the ids keeps the plain factors, then picks feature_l2 from
FEATURE_L2_GRID on validation. The maps are computed in
the towers from the profile's features (`Residual.feature_tables`), so users and profiles
unseen in training get V g_u and W f_v too, and a profile edited since training its new one.

With a swipe history (the config's `history`), each list is a group too, read per swipe
(SVD++'s implicit feedback, Koren 2008): with h_i the multi-hot of the candidates the user
liked (or passed) before swipe i, over sqrt(their number),

  p_u(i) = e_u + V g_u + Y h_i       Y [r, the list's rows], penalised like V and W

so that a user's swipes since training move their factor without a refit. The towers pool
the same Y rows over the history inputs (`feature_tables`).

The towers then output (`towers.with_like_residual`), an inner product again:

  query      [a * q, 1, b_u, p_u]  ([a * q, 1, 0, V g_u (+ Y h)] unseen)  [B, d + 2 + r]
  candidate  [c, b_v, 1, s_v]                                      [B, d + 2 + r]
  score      a * cos_uv + b_u + b_v + p_u . s_v = z(u, v) - b_0
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.special

# Ranks and penalty strengths tried on validation (docs/training.md, "Oracle headroom" 11, 12).
RANKS = (2, 4, 16)
L2_GRID = (0.03, 0.1, 0.3)
MAX_ITERATIONS = 200
# The penalty on the feature maps V, W and the history maps Y (a sum over their entries, the
# loss being a mean over swipes) while groups are chosen: 1e-3 kept the default world's gain,
# 1e-2 lost it ("Oracle headroom" 13, before Y existed); then validation picks it from the
# grid for the chosen groups.
FEATURE_L2 = 1e-3
FEATURE_L2_GRID = (1e-4, 1e-3, 1e-2)
# L-BFGS keeps `maxcor` pairs of [parameters] vectors. With scipy's default of 10 the
# fits stop short within MAX_ITERATIONS (default world, rank 4: validation log loss 0.476
# vs 0.468 with 100 at the same time); 100 pairs, or fewer within this memory.
LBFGS_MEMORY_BYTES = 512 << 20
# The 11 plain fits of `choose` cost ~160 us a train swipe on 2 cores (+32 s at the default
# world's 200k swipes); its feature search, up to G (G + 1) / 2 + 3 more fits for G feature
# groups, took 1x to 3x that again on three data sets ("Oracle headroom" 15); above this many
# swipes the residual is skipped with a log line.
MAX_SWIPES = 2_000_000
_CHUNK = 1 << 20  # swipes per row-dot block: [chunk, r] temporaries, not [n, r]


_SWIPE_ARRAYS = ("query", "candidate", "cosine", "label", "weight")


@dataclasses.dataclass
class Swipes:
  """Swipes as table rows. All [n]: query / candidate row, the towers' cosine, label, weight.

  `history`: history group name ("history_liked": the query core input `query_history_liked`
  without the side's prefix) -> [n, candidate rows] CSR, each swipe's `multi_hot` of the
  candidates its query liked (or passed) before it, the list the query tower reads.
  """
  query: np.ndarray
  candidate: np.ndarray
  cosine: np.ndarray
  label: np.ndarray
  weight: np.ndarray
  history: Dict[str, scipy.sparse.csr_matrix] = dataclasses.field(default_factory=dict)

  def __add__(self, other: "Swipes") -> "Swipes":
    if set(self.history) != set(other.history):
      raise ValueError(f"swipes with history lists {sorted(self.history)} and "
                       f"{sorted(other.history)} cannot be joined")
    return Swipes(*(np.concatenate([getattr(self, name), getattr(other, name)])
                    for name in _SWIPE_ARRAYS),
                  {name: scipy.sparse.vstack([matrix, other.history[name]], format="csr")
                   for name, matrix in self.history.items()})

  def subset(self, keep: np.ndarray) -> "Swipes":
    """The swipes where `keep` ([n] bool or indices) selects."""
    return Swipes(*(getattr(self, name)[keep] for name in _SWIPE_ARRAYS),
                  {name: matrix[keep] for name, matrix in self.history.items()})


@dataclasses.dataclass
class Features:
  """Feature groups that may inform the factors: name -> {side: [table rows, k] CSR}.

  A group is one feature name on either side or both ("interests" on a dating app's
  two sides, "genres" on movies only); `side` is "query" or "candidate". Rows that carry
  no feature (padding, OOV) are empty.
  """
  groups: Dict[str, Dict[str, scipy.sparse.csr_matrix]]

  @staticmethod
  def key(name: str, side: str) -> str:
    """The core input a group reads on a side: its name with the side's prefix."""
    return f"{side}_{name}"

  def stack(self, names: Sequence[str], side: str, num_rows: int) -> scipy.sparse.csr_matrix:
    """[num_rows, sum of k] the named groups' columns of one side (0 columns: none)."""
    blocks = [self.groups[name][side] for name in names if side in self.groups[name]]
    if not blocks:
      return scipy.sparse.csr_matrix((num_rows, 0))
    return scipy.sparse.hstack(blocks, format="csr")


def multi_hot(indices: np.ndarray, num_columns: int) -> scipy.sparse.csr_matrix:
  """[n, num_columns] CSR: each row's token counts over sqrt(its number of tokens).

  `indices` [n] or [n, L], 0 = no token. The towers compute the same from the core input
  (`towers.MaskedPooling`'s "sqrtn"), so a token listed twice counts twice.
  """
  indices = np.asarray(indices, np.int64).reshape(len(indices), -1)
  rows, cols = np.nonzero(indices > 0)
  matrix = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, indices[rows, cols])),
                                   shape=(len(indices), num_columns))  # duplicates add up
  count = np.bincount(rows, minlength=len(indices))
  return scipy.sparse.diags(1.0 / np.sqrt(np.maximum(count, 1))) @ matrix


@dataclasses.dataclass
class Residual:
  """A fitted z(u, v); biases [rows], factors p_u, s_v (`factors`) [rows, r].

  A row's factor is its own (`query_factors` e_u, `candidate_factors` e_v) plus, with
  feature groups, the maps' part (`query_mapped` V g_u, `candidate_mapped` W f_v, of the
  rows' training features). `query_maps` / `candidate_maps`: core input key -> [k, r],
  each feature's block of V / W, transposed; `history_maps` the same of Y, the history
  lists' map (module docstring), which adds to p_u per swipe.
  """
  scale: float
  intercept: float
  query_bias: np.ndarray
  query_factors: np.ndarray
  candidate_bias: np.ndarray
  candidate_factors: np.ndarray
  l2: float
  features: Tuple[str, ...] = ()  # the feature groups of the maps
  query_maps: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  candidate_maps: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  query_mapped: Optional[np.ndarray] = None
  candidate_mapped: Optional[np.ndarray] = None
  feature_l2: float = FEATURE_L2
  history_maps: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def rank(self) -> int:
    return int(self.query_factors.shape[1])

  def factors(self, side: str) -> np.ndarray:
    """[rows, r] p_u (side "query") or s_v ("candidate"): own + mapped."""
    own, mapped = getattr(self, f"{side}_factors"), getattr(self, f"{side}_mapped")
    return own if mapped is None else own + mapped

  def logits(self, swipes: Swipes) -> np.ndarray:
    """[n] z(u, v) of each swipe."""
    names = [name for name in self.features if Features.key(name, "query") in self.history_maps]
    history_part = sum(swipes.history[name] @ self.history_maps[Features.key(name, "query")]
                       for name in names) if names else None
    return _swipe_logits(swipes, self.scale, self.intercept, self.query_bias,
                         self.candidate_bias, self.factors("query"), self.factors("candidate"),
                         history_part)

  def log_loss(self, swipes: Swipes) -> float:
    """Weighted mean log loss of the swipes' labels."""
    w = swipes.weight / max(float(np.sum(swipes.weight)), 1e-12)
    return float(np.sum(w * _log_loss_terms(self.logits(swipes), swipes.label)))

  def feature_tables(self, side: str) -> Dict[str, np.ndarray]:
    """Core input key -> [k, 2 + r] float32 [0, 0, V_f^T] (a history list's: Y_f^T): what
    each feature adds to the side's appended columns (`towers.with_like_residual` sums them,
    "sqrtn"-pooled)."""
    maps = {**getattr(self, f"{side}_maps"), **(self.history_maps if side == "query" else {})}
    tables = {key: np.concatenate([np.zeros((len(block), 2)), block], 1).astype(np.float32)
              for key, block in maps.items()}
    for table in tables.values():
      # Row 0, a missing value, is gathered unmasked from a single-valued input: 0 by
      # construction (no data gradient, started at 0), stated here rather than relied on.
      table[0] = 0.0
    return tables

  def query_table(self, first_known_row: int) -> np.ndarray:
    """[query rows, 2 + r] float32: the query tower's id-table columns [1, b_u, e_u].

    Rows below `first_known_row` (padding, OOV: users unseen in training) get
    [1, 0, 0], plus V g_u (`feature_tables`): the towers, the profiles' like bias b_v
    and the feature maps rank them. A fitted OOV bias and factor ranked MovieLens' new
    users below popularity; b_v alone raised new users' oracle_like@10 on both worlds and
    their AUC on all three data sets (docs/training.md, "Oracle headroom" 11 and 12).
    """
    return _id_table(self.query_bias, self.query_factors, 0, first_known_row)

  def candidate_table(self, first_known_row: int) -> np.ndarray:
    """[candidate rows, 2 + r] float32: the candidate tower's id-table columns [b_v, 1, e_v].

    Rows below `first_known_row` (padding, OOV: profiles unseen in training) get
    [0, 1, 0], plus W f_v (`feature_tables`), as the fit scored them (`residual_swipes`
    leaves their swipes out, so no fitted row stands in for their features).
    """
    return _id_table(self.candidate_bias, self.candidate_factors, 1, first_known_row)


def _id_table(bias: np.ndarray, factors: np.ndarray, ones_column: int,
              first_known_row: int) -> np.ndarray:
  """[rows, 2 + r] float32 [1, b, e] (`ones_column` 0, the query side) or [b, 1, e] (1);
  rows below `first_known_row` (padding, OOV) keep only the 1: no bias, no factor."""
  bias_column = 1 - ones_column
  out = np.zeros((len(bias), 2 + factors.shape[1]))
  out[:, ones_column] = 1.0
  out[first_known_row:, bias_column] = bias[first_known_row:]
  out[first_known_row:, 2:] = factors[first_known_row:]
  return out.astype(np.float32)


def _swipe_logits(swipes: Swipes, scale: float, intercept: float, query_bias: np.ndarray,
                  candidate_bias: np.ndarray, p: np.ndarray, s: np.ndarray,
                  history_part: Optional[np.ndarray]) -> np.ndarray:
  """[n] z = a cos + b_0 + b_u + b_v + (p_u + Y h_i) . s_v per swipe i (module docstring).

  p, s [rows, r] the sides' factors; `history_part` [n, r] each swipe's Y h_i, or None.
  """
  z = (scale * swipes.cosine + intercept + candidate_bias[swipes.candidate]
       + query_bias[swipes.query] + row_dots(p, s, swipes.query, swipes.candidate))
  if history_part is not None:
    z += row_dots(history_part, s, np.arange(z.size), swipes.candidate)
  return z


def _log_loss_terms(z: np.ndarray, label: np.ndarray) -> np.ndarray:
  """[n] -log P(label | logit z) = log(1 + e^z) - label * z, stable for any z."""
  return np.logaddexp(0.0, z) - label * z


def row_dots(p: np.ndarray, s: np.ndarray, query: np.ndarray,
             candidate: np.ndarray) -> np.ndarray:
  """[n] p[query_i] . s[candidate_i] for tables p [rows, r], s [rows, r], in blocks."""
  out = np.empty(query.size)
  for i in range(0, out.size, _CHUNK):
    j = slice(i, i + _CHUNK)
    out[j] = np.einsum("nr,nr->n", p[query[j]], s[candidate[j]])
  return out


def fit(swipes: Swipes, num_query_rows: int, num_candidate_rows: int, rank: int, l2: float,
        seed: int = 0, max_iterations: int = MAX_ITERATIONS,
        start: Optional[Residual] = None, features: Optional[Features] = None,
        feature_names: Sequence[str] = (), feature_l2: float = FEATURE_L2) -> Residual:
  """Fits z(u, v) (module docstring) to the swipes; deterministic given the seed.

  The factors start at N(0, 0.1^2) (at 0 the gradient of p_u . s_v vanishes), or at
  `start`, a fit of the same rank (a warm start along the penalty path: fewer steps).
  `feature_names`: groups of `features` whose maps V, W inform the factors, and history
  groups of `swipes.history` whose map Y does; they start at `start`'s maps of the same
  groups, and at 0 for the others.
  """
  n_q, n_c, r = num_query_rows, num_candidate_rows, rank
  features = features or Features({})
  history_names = [name for name in feature_names if name in swipes.history]
  entity_names = [name for name in feature_names if name not in swipes.history]
  # Per map, its groups: (core input key, number of columns), in stacking order.
  blocks = {side: [(Features.key(name, side), features.groups[name][side].shape[1])
                   for name in entity_names if side in features.groups[name]]
            for side in ("query", "candidate")}
  blocks["history"] = [(Features.key(name, "query"), swipes.history[name].shape[1])
                       for name in history_names]
  g_q = features.stack(entity_names, "query", n_q)
  g_c = features.stack(entity_names, "candidate", n_c)
  h = (scipy.sparse.hstack([swipes.history[name] for name in history_names], format="csr")
       if history_names else scipy.sparse.csr_matrix((swipes.query.size, 0)))
  k_q, k_c, k_h = g_q.shape[1], g_c.shape[1], h.shape[1]
  w = swipes.weight / max(float(np.sum(swipes.weight)), 1e-12)
  # A [queries, candidates] sparse matrix whose values are refilled with dL/dz each step:
  # its products with the factors are the factors' data gradients.
  order = np.lexsort((swipes.candidate, swipes.query))
  pattern = scipy.sparse.csr_matrix(
      (np.ones(order.size), (swipes.query[order], swipes.candidate[order])), shape=(n_q, n_c))
  if pattern.nnz != order.size:  # CSR sums repeated (query, candidate) pairs, so a refill
    pattern = None                # in swipe order would not line up: build it each step
  # [candidates, swipes] 1 at each swipe's candidate: sums the history part's gradient.
  by_candidate = scipy.sparse.csr_matrix(
      (np.ones(swipes.query.size), (swipes.candidate, np.arange(swipes.query.size))),
      shape=(n_c, swipes.query.size)) if k_h else None

  def gradient_matrix(g):
    if pattern is not None:
      pattern.data = g[order]
      return pattern
    return scipy.sparse.csr_matrix((g, (swipes.query, swipes.candidate)), shape=(n_q, n_c))

  sizes = [1, 1, n_c, n_q, n_q * r, n_c * r, r * k_q, r * k_c, r * k_h]

  def unpack(theta):
    a, b0, b, bq, e_q, e_c, v_q, v_c, y = np.split(theta, np.cumsum(sizes)[:-1])
    return (a[0], b0[0], b, bq, e_q.reshape(n_q, r), e_c.reshape(n_c, r), v_q.reshape(r, k_q),
            v_c.reshape(r, k_c), y.reshape(r, k_h))

  def objective(theta):
    a, b0, b, bq, e_q, e_c, v_q, v_c, y = unpack(theta)
    p, s = e_q + g_q @ v_q.T, e_c + g_c @ v_c.T
    # Each swipe's p_u has its history's part Y h too: [n, r].
    history_part = np.asarray(h @ y.T) if k_h else None
    z = _swipe_logits(swipes, a, b0, bq, b, p, s, history_part)
    loss = np.sum(w * _log_loss_terms(z, swipes.label))
    g = w * (scipy.special.expit(z) - swipes.label)
    matrix = gradient_matrix(g)
    data_p, data_s = matrix @ s, matrix.T @ p
    grad_y = 2 * feature_l2 * y
    if k_h:
      data_s += by_candidate @ (g[:, None] * history_part)
      grad_y += _history_gradient(h, g, s, swipes.candidate).T
    grad_b = np.bincount(swipes.candidate, g, n_c) + 2 * l2 / n_c * b
    grad_bq = np.bincount(swipes.query, g, n_q) + 2 * l2 / n_q * bq
    loss += (l2 * ((np.sum(e_q * e_q) + np.sum(bq * bq)) / n_q
                   + (np.sum(e_c * e_c) + np.sum(b * b)) / n_c)
             + feature_l2 * (np.sum(v_q * v_q) + np.sum(v_c * v_c) + np.sum(y * y)))
    grad = np.concatenate([[np.dot(g, swipes.cosine), np.sum(g)], grad_b, grad_bq,
                           (data_p + 2 * l2 / n_q * e_q).ravel(),
                           (data_s + 2 * l2 / n_c * e_c).ravel(),
                           ((g_q.T @ data_p).T + 2 * feature_l2 * v_q).ravel(),
                           ((g_c.T @ data_s).T + 2 * feature_l2 * v_c).ravel(), grad_y.ravel()])
    return loss, grad

  def maps_start(part, known):  # [r, k] a map, from `start`'s blocks where it has them
    return np.concatenate([known[key].T if key in known else np.zeros((r, k))
                           for key, k in blocks[part]] or [np.zeros((r, 0))], 1).ravel()

  maps = np.concatenate([maps_start("query", getattr(start, "query_maps", {})),
                         maps_start("candidate", getattr(start, "candidate_maps", {})),
                         maps_start("history", getattr(start, "history_maps", {}))])
  if start is not None:
    theta = np.concatenate([[start.scale, start.intercept], start.candidate_bias,
                            start.query_bias, start.query_factors.ravel(),
                            start.candidate_factors.ravel(), maps])
  else:
    rng = np.random.default_rng(seed)
    theta = np.concatenate([[1.0, 0.0], np.zeros(n_c + n_q), rng.normal(0, 0.1, n_q * r),
                            rng.normal(0, 0.1, n_c * r), maps])
  history = int(np.clip(LBFGS_MEMORY_BYTES // (16 * theta.size), 10, 100))
  result = scipy.optimize.minimize(objective, theta, jac=True, method="L-BFGS-B",
                                   options={"maxiter": max_iterations, "maxcor": history})
  a, b0, b, bq, e_q, e_c, v_q, v_c, y = unpack(result.x)

  def split(part, v):  # core input key -> [k, r]
    offsets = np.cumsum([0] + [k for _, k in blocks[part]])
    return {key: v[:, offsets[i]:offsets[i + 1]].T.copy()
            for i, (key, _) in enumerate(blocks[part])}

  return Residual(float(a), float(b0), bq, e_q, b, e_c, float(l2), tuple(feature_names),
                  split("query", v_q), split("candidate", v_c),
                  np.asarray(g_q @ v_q.T) if k_q else None,
                  np.asarray(g_c @ v_c.T) if k_c else None, float(feature_l2),
                  split("history", y))


def _history_gradient(h: scipy.sparse.csr_matrix, g: np.ndarray, s: np.ndarray,
                      candidate: np.ndarray) -> np.ndarray:
  """[k, r] sum_i g_i h_i s_{v_i}^T, the data gradient of Y^T, in blocks of swipes."""
  out = np.zeros((h.shape[1], s.shape[1]))
  for i in range(0, g.size, _CHUNK):
    j = slice(i, i + _CHUNK)
    out += h[j].T @ (g[j, None] * s[candidate[j]])
  return out


def choose(train: Swipes, validation: Swipes, num_query_rows: int, num_candidate_rows: int,
           ranks: Sequence[int] = RANKS, grid: Sequence[float] = L2_GRID, seed: int = 0,
           log: Callable[..., None] = print, features: Optional[Features] = None,
           feature_grid: Sequence[float] = FEATURE_L2_GRID
           ) -> Tuple[Optional[Residual], List[dict]]:
  """(the model with the best validation log loss refitted on train + validation, the table).

  None instead of a model when no fit beats the towers alone on validation.

  Fits on train every (rank, l2) of `ranks` x `grid` and scores the validation swipes;
  then, at the best of them, adds `features` groups and the swipes' history groups one at a
  time (each round tries every group left, from the best fit so far) while the validation
  log loss falls, and with groups chosen tries the other penalties of `feature_grid` on
  their maps.
  The table has one row per fit, {"rank", "l2", "features", "feature_l2",
  "validation_log_loss"}, after a first row {"rank": 0, "l2": None, ...} for the towers
  alone (a and b_0 fitted only).
  """
  shape = (num_query_rows, num_candidate_rows)
  groups = list((features or Features({})).groups)
  columns = {name: matrix.shape[1] for name, matrix in train.history.items()}
  if columns != {name: matrix.shape[1] for name, matrix in validation.history.items()}:
    raise ValueError(f"choose: the train swipes' history lists {columns} and the validation "
                     f"swipes' {sorted(validation.history)} differ")
  if set(groups) & set(columns):
    raise ValueError(f"choose: feature groups {sorted(set(groups) & set(columns))} are "
                     "named like history lists")
  # A prohibitive penalty keeps b_u and b_v at 0: the towers' cosine with a and b_0 alone.
  towers_only = fit(train, *shape, rank=0, l2=1e9, seed=seed)
  table = [{"rank": 0, "l2": None, "features": [], "feature_l2": None,
            "validation_log_loss": towers_only.log_loss(validation)}]

  def scored(model):
    loss = model.log_loss(validation)
    table.append({"rank": model.rank, "l2": model.l2, "features": list(model.features),
                  "feature_l2": model.feature_l2 if model.features else None,
                  "validation_log_loss": loss})
    label = (", features %s (penalty %g)" % (" + ".join(model.features), model.feature_l2)
             if model.features else "")
    log("train: like residual rank %d, l2 %g%s: validation log loss %.4f (towers alone %.4f)"
        % (model.rank, model.l2, label, loss, table[0]["validation_log_loss"]))
    return loss

  best, best_loss = None, np.inf
  for rank in ranks:
    previous = None
    # Weak to strong, each fit from the last: a fit that the penalty pulled to 0 is a
    # saddle point (no gradient on p_u . s_v), so a path from strong to weak would stay there.
    for l2 in sorted(grid):
      previous = fit(train, *shape, rank, l2, seed, start=previous)
      loss = scored(previous)
      if loss < best_loss:
        best, best_loss = previous, loss
  if not best_loss < table[0]["validation_log_loss"]:
    return None, table
  remaining = groups + list(columns)
  while remaining:
    trials = [fit(train, *shape, best.rank, best.l2, seed, start=best, features=features,
                  feature_names=best.features + (name,)) for name in remaining]
    losses = [scored(trial) for trial in trials]
    if not min(losses) < best_loss:
      break
    best, best_loss = trials[int(np.argmin(losses))], min(losses)
    remaining.remove(best.features[-1])
  if best.features:
    for feature_l2 in sorted(set(feature_grid) - {best.feature_l2}):
      trial = fit(train, *shape, best.rank, best.l2, seed, start=best, features=features,
                  feature_names=best.features, feature_l2=feature_l2)
      loss = scored(trial)
      if loss < best_loss:
        best, best_loss = trial, loss
  return fit(train + validation, *shape, best.rank, best.l2, seed, start=best,
             features=features, feature_names=best.features,
             feature_l2=best.feature_l2), table
