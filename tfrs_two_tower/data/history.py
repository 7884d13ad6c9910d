"""The query user's recent swipes before a time: the history inputs of the query tower.

For one list (e.g. the likes: interactions whose label is 1) the history of a
user u at time t is

  H(u, t) = the candidates of u's interactions of that list with timestamp < t,
            the most recent first, cut to the last N

Ties at t are excluded, so an interaction never sees itself, nor anything at
or after its own time. Interactions at the same time are ordered by candidate
row (any fixed order would do; this one is deterministic).

`SwipeLog` answers H(u, t) for millions of (u, t) at once with sorts and
binary searches (no Python loop): the events sorted by (user, time) form one
int64 key per event, `user * (T + 1) + rank(time)` with T the number of
distinct event times; the number of events before (u, t) is a `searchsorted`
of the same key of (u, t), and H(u, t) is the <= N events just before it that
belong to u.

`HistoryBuffer` is the dataset writer's side of it: with a history the writer
holds every interaction (~30 bytes each) until the whole log is known.
"""

from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import example_codec
from tfrs_two_tower.data import reader

NO_ITEM = -1


class SwipeLog:
  """Events (user, item, time) of one list, indexed for `last_before`.

  Args:
    users, items: [n] int64 rows (entity table rows of the user and the item).
    times: [n] int64 unix seconds.
  """

  def __init__(self, users: np.ndarray, items: np.ndarray, times: np.ndarray):
    users, items, times = (np.asarray(a, np.int64) for a in (users, items, times))
    self.times = np.unique(times)  # sorted distinct event times
    order = np.lexsort((items, times, users))
    self.items = items[order]
    self.users = users[order]
    self.keys = self._key(self.users, np.searchsorted(self.times, times[order]))

  def _key(self, users: np.ndarray, time_ranks: np.ndarray) -> np.ndarray:
    return users * np.int64(self.times.size + 1) + time_ranks

  def last_before(self, users: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """[m, n] items of each user's last n events strictly before its time.

    Most recent first; NO_ITEM pads a shorter history.
    """
    users, times = np.asarray(users, np.int64), np.asarray(times, np.int64)
    # Events before (u, t): key < u * (T + 1) + (number of distinct times < t).
    end = np.searchsorted(self.keys, self._key(users, np.searchsorted(self.times, times)))
    start = np.searchsorted(self.keys, self._key(users, np.zeros_like(users)))
    positions = end[:, None] - 1 - np.arange(n, dtype=np.int64)[None, :]
    valid = positions >= start[:, None]
    return np.where(valid, self.items[np.where(valid, positions, 0)], NO_ITEM)


def swipe_logs(history: config_lib.History, users: np.ndarray, items: np.ndarray,
               labels: np.ndarray, times: np.ndarray) -> Dict[str, SwipeLog]:
  """One `SwipeLog` per configured list (`liked`: label 1, `passed`: label 0)."""
  labels = np.asarray(labels)
  out = {}
  for name in history.lists:
    rows = labels == config_lib.HISTORY_LISTS[name]
    out[name] = SwipeLog(np.asarray(users)[rows], np.asarray(items)[rows],
                         np.asarray(times)[rows])
  return out


def history_ids(history: config_lib.History, logs: Mapping[str, SwipeLog], item_ids: np.ndarray,
                users: np.ndarray, times: np.ndarray) -> Dict[str, List[List[str]]]:
  """Dataset key -> per (user, time) the list of history item ids (no padding)."""
  out = {}
  for name, log in logs.items():
    items = log.last_before(users, times, history.max_length)
    out[history.key(name)] = [item_ids[row[row != NO_ITEM]].tolist() for row in items]
  return out


def preprocessing_entries(history: config_lib.History,
                          candidate_id: Mapping[str, object]) -> Dict[str, Dict[str, object]]:
  """preprocessing.json entries of the history lists: the candidate id vocabulary.

  Args:
    candidate_id: the `candidate_id` entry (vocabulary path, size, OOV buckets).
  """
  shared = {k: candidate_id[k] for k in ("vocabulary", "vocab_size", "num_oov_buckets")}
  return {history.key(name): dict(shared, type="history", side="query", name=name,
                                  max_length=history.max_length,
                                  share_candidate_id_embedding=history.share_candidate_id_embedding)
          for name in history.lists}


class HistoryBuffer:
  """Holds the writer's interactions until the log is complete, then writes them.

  `flush(write)` calls `write(q_rows, c_rows, actions, timestamps, weights,
  extra)` in chunks, `extra[i]` being the serialised history entries of row i.
  """

  def __init__(self, history: config_lib.History, candidate_ids: np.ndarray,
               action_labels: Mapping[str, int], chunk_size: int = 100_000):
    self.history = history
    self.candidate_ids = np.asarray(candidate_ids, dtype=object)
    self.action_labels = dict(action_labels)
    self.chunk_size = chunk_size
    self.parts: List[tuple] = []
    self.flushed = False

  def add(self, q_rows, c_rows, actions, timestamps, weights) -> None:
    if self.flushed:
      raise RuntimeError("history: interactions added after the dataset was summarised "
                         "(stats/counters read before the last chunk)")
    self.parts.append((np.asarray(q_rows, np.int64), np.asarray(c_rows, np.int64),
                       np.asarray(actions, dtype=object), np.asarray(timestamps, np.int64),
                       np.asarray(weights, np.float64)))

  def flush(self, write: Callable[..., None]) -> None:
    if self.flushed:
      return
    self.flushed = True
    if not self.parts:
      return
    q, c, actions, times, weights = (np.concatenate(column) for column in zip(*self.parts))
    self.parts = []
    labels = np.array([self.action_labels[a] for a in actions], np.int64)
    logs = swipe_logs(self.history, q, c, labels, times)
    encoded = [example_codec.bytes_list_entry(key, []) for key in self.history.keys]
    for start in range(0, len(q), self.chunk_size):
      rows = slice(start, start + self.chunk_size)
      lists = history_ids(self.history, logs, self.candidate_ids, q[rows], times[rows])
      extra = [b"".join(example_codec.bytes_list_entry(key, [v.encode("utf-8") for v in ids])
                        if ids else empty
                        for key, empty, ids in zip(lists, encoded, row_lists))
               for row_lists in zip(*lists.values())]
      write(q[rows], c[rows], actions[rows], times[rows], weights[rows], extra)


def histories_at(history: config_lib.History, interactions: Mapping[str, np.ndarray],
                 user_ids: Sequence[str], time: Optional[int] = None
                 ) -> Dict[str, List[List[str]]]:
  """Each user's history lists as of `time` (default: after every interaction given).

  Args:
    interactions: `query_id`, `candidate_id` (str), `label`, `timestamp` arrays,
      e.g. `reader.read_interactions(dataset, "train", ...)`: the swipes up to
      the ranking time.
    user_ids: [U] query ids.
  Returns:
    dataset key -> [U] lists of candidate ids, most recent first.
  """
  query = np.asarray(interactions["query_id"], dtype=object)
  candidate = np.asarray(interactions["candidate_id"], dtype=object)
  users, user_rows = np.unique(np.concatenate([query, np.asarray(user_ids, dtype=object)]),
                               return_inverse=True)
  items, item_rows = np.unique(candidate, return_inverse=True)
  times = np.asarray(interactions["timestamp"], np.int64)
  logs = swipe_logs(history, user_rows[:query.size], item_rows, interactions["label"], times)
  at = (int(times.max()) + 1 if times.size else 0) if time is None else int(time)
  wanted = user_rows[query.size:]
  return history_ids(history, logs, items, wanted, np.full(wanted.size, at, np.int64))


def split_histories(dataset: reader.DatasetDir, user_ids: Sequence[str]
                    ) -> Dict[str, List[List[str]]]:
  """History lists of `user_ids` as of the dataset's split (every train and validation swipe).

  What the query tower sees for a user ranked right after training (publishing
  embeddings, calibration); {} when the config declares no history.
  """
  history = dataset.config.history
  if not history:
    return {}
  keys = (features_lib.QUERY_ID, features_lib.CANDIDATE_ID, features_lib.LABEL,
          features_lib.TIMESTAMP)
  splits = [reader.read_interactions(dataset, split, keys=keys)
            for split in ("train", "validation")]
  swipes = {k: np.concatenate([s[k] for s in splits if s]) for k in keys}
  return histories_at(history, swipes, user_ids)
