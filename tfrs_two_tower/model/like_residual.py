"""The like-vs-pass residual: who likes whom among the profiles shown, fitted after training.

The retrieval softmax learns P(shown and liked), i.e. mostly the logging feed's
exposure; what a user likes among the profiles they were shown, beyond what the
profile features say, is collaborative (a hidden taste and a hidden style that only
the ids carry: docs/training.md, "Oracle headroom"). With the towers fixed, this
module fits on the swipes (like 1, pass 0, the swipe's weight) the logistic model

  z(u, v) = a * cos_uv + b_0 + b_u + b_v + p_u . s_v        p_u, s_v in R^r

by L-BFGS (scipy) on the weighted mean log loss plus
l2 * (sum_u (|p_u|^2 + b_u^2) / n_q + sum_v (|s_v|^2 + b_v^2) / n_c) (a Gaussian prior
on the rows; n_q, n_c the table sizes). b_u (how readily u likes) moves no user's own
ranking; it moves the pair score across users: the AUC over all swipes, the calibrated
P(like) and the reciprocal match score P(u likes v) P(v likes u). u and v are rows of
the id features' embedding tables (their vocabulary index); a query's first
`new_user_swipes` swipes are left out (they train the towers' new-user path), and
users unseen in training get b_u = 0, p_u = 0 (`Residual.query_table`): the towers
and b_v rank them. The rank and the penalty are chosen from RANKS x L2_GRID by the
validation swipes' log loss (fits on train), and the chosen model is refitted on
train + validation.

The towers then output (`towers.with_like_residual`), an inner product again:

  query      [a * q, 1, b_u, p_u]  ([a * q, 1, 0, 0] unseen)  [B, d + 2 + r]
  candidate  [c, b_v, 1, s_v]                                  [B, d + 2 + r]
  score      a * cos_uv + b_u + b_v + p_u . s_v = z(u, v) - b_0
"""

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.special

# Ranks and penalty strengths tried on validation (docs/training.md, "Oracle headroom" 11, 12).
RANKS = (2, 4, 16)
L2_GRID = (0.03, 0.1, 0.3)
MAX_ITERATIONS = 200
# L-BFGS keeps `maxcor` pairs of [parameters] vectors. With scipy's default of 10 the
# fits stop short within MAX_ITERATIONS (default world, rank 4: validation log loss 0.476
# vs 0.468 with 100 at the same time); 100 pairs, or fewer within this memory.
LBFGS_MEMORY_BYTES = 512 << 20
# The 11 fits of `choose` cost ~160 us a train swipe on 2 cores (+32 s at the default
# world's 200k swipes); above this many the residual is skipped with a log line.
MAX_SWIPES = 2_000_000
_CHUNK = 1 << 20  # swipes per row-dot block: [chunk, r] temporaries, not [n, r]


@dataclasses.dataclass
class Swipes:
  """Swipes as table rows. All [n]: query / candidate row, the towers' cosine, label, weight."""
  query: np.ndarray
  candidate: np.ndarray
  cosine: np.ndarray
  label: np.ndarray
  weight: np.ndarray

  def __add__(self, other: "Swipes") -> "Swipes":
    return Swipes(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                    for f in dataclasses.fields(self)))


@dataclasses.dataclass
class Residual:
  """A fitted z(u, v); factors [rows, r], biases [rows]."""
  scale: float
  intercept: float
  query_bias: np.ndarray
  query_factors: np.ndarray
  candidate_bias: np.ndarray
  candidate_factors: np.ndarray
  l2: float

  @property
  def rank(self) -> int:
    return int(self.query_factors.shape[1])

  def logits(self, swipes: Swipes) -> np.ndarray:
    return (self.scale * swipes.cosine + self.intercept + self.query_bias[swipes.query]
            + self.candidate_bias[swipes.candidate]
            + row_dots(self.query_factors, self.candidate_factors, swipes.query,
                       swipes.candidate))

  def log_loss(self, swipes: Swipes) -> float:
    """Weighted mean log loss of the swipes' labels."""
    w = swipes.weight / max(float(np.sum(swipes.weight)), 1e-12)
    return float(np.sum(w * _log_loss_terms(self.logits(swipes), swipes.label)))

  def query_table(self, first_known_row: int) -> np.ndarray:
    """[query rows, 2 + r] float32: the query tower's appended columns [1, b_u, p_u].

    Rows below `first_known_row` (padding, OOV: users unseen in training) get
    [1, 0, 0]: the towers and the profiles' like bias b_v rank them. A fitted OOV bias
    and factor ranked MovieLens' new users below popularity; b_v alone raised new
    users' oracle_like@10 on both worlds and their AUC on all three data sets
    (docs/training.md, "Oracle headroom" 11 and 12).
    """
    out = np.concatenate([np.ones((len(self.query_bias), 1)), self.query_bias[:, None],
                          self.query_factors], 1)
    out[:first_known_row] = 0.0
    out[:first_known_row, 0] = 1.0
    return out.astype(np.float32)

  def candidate_table(self) -> np.ndarray:
    """[candidate rows, 2 + r] float32: the candidate tower's appended columns [b_v, 1, s_v]."""
    return np.concatenate([self.candidate_bias[:, None], np.ones((len(self.candidate_bias), 1)),
                           self.candidate_factors], 1).astype(np.float32)


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
        start: Optional[Residual] = None) -> Residual:
  """Fits z(u, v) (module docstring) to the swipes; deterministic given the seed.

  The factors start at N(0, 0.1^2) (at 0 the gradient of p_u . s_v vanishes), or at
  `start`, a fit of the same rank (a warm start along the penalty path: fewer steps).
  """
  n_q, n_c, r = num_query_rows, num_candidate_rows, rank
  w = swipes.weight / max(float(np.sum(swipes.weight)), 1e-12)
  # A [queries, candidates] sparse matrix whose values are refilled with dL/dz each step:
  # its products with the factors are the factors' data gradients.
  order = np.lexsort((swipes.candidate, swipes.query))
  pattern = scipy.sparse.csr_matrix(
      (np.ones(order.size), (swipes.query[order], swipes.candidate[order])), shape=(n_q, n_c))
  if pattern.nnz != order.size:  # CSR sums repeated (query, candidate) pairs, so a refill
    pattern = None                # in swipe order would not line up: build it each step

  def gradient_matrix(g):
    if pattern is not None:
      pattern.data = g[order]
      return pattern
    return scipy.sparse.csr_matrix((g, (swipes.query, swipes.candidate)), shape=(n_q, n_c))

  def unpack(theta):
    a, b0 = theta[0], theta[1]
    b = theta[2:2 + n_c]
    bq = theta[2 + n_c:2 + n_c + n_q]
    p = theta[2 + n_c + n_q:2 + n_c + n_q + n_q * r].reshape(n_q, r)
    s = theta[2 + n_c + n_q + n_q * r:].reshape(n_c, r)
    return a, b0, b, bq, p, s

  def objective(theta):
    a, b0, b, bq, p, s = unpack(theta)
    z = (a * swipes.cosine + b0 + b[swipes.candidate] + bq[swipes.query]
         + row_dots(p, s, swipes.query, swipes.candidate))
    loss = np.sum(w * _log_loss_terms(z, swipes.label))
    g = w * (scipy.special.expit(z) - swipes.label)
    matrix = gradient_matrix(g)
    grad_p = matrix @ s + 2 * l2 / n_q * p
    grad_s = matrix.T @ p + 2 * l2 / n_c * s
    grad_b = np.bincount(swipes.candidate, g, n_c) + 2 * l2 / n_c * b
    grad_bq = np.bincount(swipes.query, g, n_q) + 2 * l2 / n_q * bq
    loss += l2 * ((np.sum(p * p) + np.sum(bq * bq)) / n_q + (np.sum(s * s) + np.sum(b * b)) / n_c)
    grad = np.concatenate([[np.dot(g, swipes.cosine), np.sum(g)], grad_b, grad_bq,
                           grad_p.ravel(), grad_s.ravel()])
    return loss, grad

  if start is not None:
    theta = np.concatenate([[start.scale, start.intercept], start.candidate_bias,
                            start.query_bias, start.query_factors.ravel(),
                            start.candidate_factors.ravel()])
  else:
    rng = np.random.default_rng(seed)
    theta = np.concatenate([[1.0, 0.0], np.zeros(n_c + n_q), rng.normal(0, 0.1, n_q * r),
                            rng.normal(0, 0.1, n_c * r)])
  history = int(np.clip(LBFGS_MEMORY_BYTES // (16 * theta.size), 10, 100))
  result = scipy.optimize.minimize(objective, theta, jac=True, method="L-BFGS-B",
                                   options={"maxiter": max_iterations, "maxcor": history})
  a, b0, b, bq, p, s = unpack(result.x)
  return Residual(float(a), float(b0), bq, p, b, s, float(l2))


def choose(train: Swipes, validation: Swipes, num_query_rows: int, num_candidate_rows: int,
           ranks: Sequence[int] = RANKS, grid: Sequence[float] = L2_GRID, seed: int = 0,
           log: Callable[..., None] = print) -> Tuple[Optional[Residual], List[dict]]:
  """(the model with the best validation log loss refitted on train + validation, the table).

  None instead of a model when no fit beats the towers alone on validation.

  Fits on train every (rank, l2) of `ranks` x `grid` and scores the validation swipes.
  The table has one row per fit, {"rank", "l2", "validation_log_loss"}, after a first
  row {"rank": 0, "l2": None, ...} for the towers alone (a and b_0 fitted only).
  """
  shape = (num_query_rows, num_candidate_rows)
  # A prohibitive penalty keeps b_u and b_v at 0: the towers' cosine with a and b_0 alone.
  towers_only = fit(train, *shape, rank=0, l2=1e9, seed=seed)
  table = [{"rank": 0, "l2": None, "validation_log_loss": towers_only.log_loss(validation)}]
  fits = {}
  for rank in ranks:
    previous = None
    # Weak to strong, each fit from the last: a fit that the penalty pulled to 0 is a
    # saddle point (no gradient on p_u . s_v), so a path from strong to weak would stay there.
    for l2 in sorted(grid):
      previous = fits[rank, l2] = fit(train, *shape, rank, l2, seed, start=previous)
      loss = previous.log_loss(validation)
      table.append({"rank": int(rank), "l2": float(l2), "validation_log_loss": loss})
      log("train: like residual rank %d, l2 %g: validation log loss %.4f (towers alone %.4f)"
          % (rank, l2, loss, table[0]["validation_log_loss"]))
  best = min(table[1:], key=lambda row: row["validation_log_loss"])
  if not best["validation_log_loss"] < table[0]["validation_log_loss"]:
    return None, table
  chosen = fits[best["rank"], best["l2"]]
  return fit(train + validation, *shape, chosen.rank, chosen.l2, seed, start=chosen), table
