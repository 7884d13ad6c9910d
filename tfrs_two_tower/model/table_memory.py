"""Memory the embedding tables of both towers need in training, checked before training starts.

Each vocabulary feature of a side has a float32 table of

  rows = 1 (padding) + num_oov_buckets + vocab_size,   dim = embedding_dim

and training holds, per table, the weights plus the optimizer's slots of the
same shape (Adam: m and v; SGD with momentum: m; Adagrad: the accumulator).
The stock (dense) update of an IndexedSlices gradient also materialises about
`DENSE_UPDATE_TEMPORARIES` table-sized temporaries per step (the decayed slots
and the update); the lazy update's temporaries are batch-sized. So

  bytes = 4 * sum_tables rows * dim * (1 + slots [+ DENSE_UPDATE_TEMPORARIES])

The check refuses a run whose tables need more than `BUDGET_FRACTION` of the
memory available now (the rest is the input pipeline's entity features and
split arrays, TensorFlow itself and evaluation); the message names the largest
tables and what shrinks them.
"""

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import psutil

from tfrs_two_tower.model import preprocessing as prep

SLOTS = {"adam": 2, "sgd": 1, "adagrad": 1}
DENSE_UPDATE_TEMPORARIES = 2
BUDGET_FRACTION = 0.6
FLOAT_BYTES = 4


class TablesTooLargeError(ValueError):
  """The vocabularies at the requested embedding sizes do not fit in memory."""


def tables(specs: Sequence[Mapping[str, Any]],
           default_embedding_dim: int) -> List[Tuple[str, int, int]]:
  """(feature key, rows, dim) of every vocabulary embedding table of one side's specs."""
  return [(spec["key"], prep.num_rows(spec),
           int(spec.get("embedding_dim") or default_embedding_dim))
          for spec in specs if spec["type"] in prep.VOCAB_TYPES]


def training_bytes(all_tables: Sequence[Tuple[str, int, int]], optimizer: str,
                   sparse_updates: bool) -> int:
  copies = 1 + SLOTS[optimizer] + (0 if sparse_updates else DENSE_UPDATE_TEMPORARIES)
  return FLOAT_BYTES * copies * sum(rows * dim for _, rows, dim in all_tables)


def check_fits(all_tables: Sequence[Tuple[str, int, int]], optimizer: str,
               sparse_updates: bool, budget_bytes: Optional[int] = None) -> int:
  """Returns the bytes the tables need in training; raises TablesTooLargeError if too many.

  budget_bytes: what the tables may use; None: BUDGET_FRACTION of the memory
  available now.
  """
  need = training_bytes(all_tables, optimizer, sparse_updates)
  if budget_bytes is None:
    budget_bytes = int(BUDGET_FRACTION * psutil.virtual_memory().available)
  if need <= budget_bytes:
    return need
  largest = sorted(all_tables, key=lambda t: -t[1] * t[2])[:3]
  copies = 1 + SLOTS[optimizer] + (0 if sparse_updates else DENSE_UPDATE_TEMPORARIES)
  described = ", ".join(f"{key}: {rows:,} rows x {dim} = {_gb(FLOAT_BYTES * copies * rows * dim)}"
                        for key, rows, dim in largest)
  raise TablesTooLargeError(
      f"the embedding tables need {_gb(need)} in training (weights + {SLOTS[optimizer]} "
      f"{optimizer} slot(s), float32{'' if sparse_updates else ' + dense-update temporaries'}; "
      f"largest: {described}) but the budget is {_gb(budget_bytes)} (--table_memory_budget; "
      f"default {BUDGET_FRACTION:.0%} of the memory available). Shrink the vocabulary and export "
      "again: raise the feature's min_count or set max_vocab_size in the config (rarer values "
      "then share the feature's num_oov_buckets OOV rows), or lower its embedding_dim in the "
      "config (--default_embedding_dim for features without one)")


def _gb(n: float) -> str:
  return f"{n / 1e9:.2f} GB"
