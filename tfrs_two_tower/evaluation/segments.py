"""User segments of the users' comparison table: new, active and long-time users.

All three are decided at the split time T from what was known then (train swipes
and the profile's created_at), never from the eval window:

  new        no train swipes at all: unseen in training. Their id is not in the
             query vocabulary (built from train swipes), so the model scores them
             through the OOV id row (trained by id dropout) and their profile.
  active     >= `active_min_swipes` train swipes in the `active_window_days` before T.
  long_time  account age at T >= `long_time_days` (created_at; the first train swipe
             when created_at is unknown).

Segments overlap (an active user can be long-time); `all` holds every evaluated user.
"""

import dataclasses
from typing import Dict

import numpy as np

SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class SegmentRules:
  active_window_days: float = 28.0
  active_min_swipes: int = 20
  long_time_days: float = 90.0

  def describe(self) -> Dict[str, str]:
    return {
        "all": "every user with at least one eval swipe",
        "new": "no train swipes: unseen in training (cold start; id out of vocabulary)",
        "active": f">= {self.active_min_swipes} train swipes in the {self.active_window_days:g} "
                  "days before the split",
        "long_time": f"account age >= {self.long_time_days:g} days at the split (created_at, "
                     "else first train swipe)"}


def assign_segments(num_users: int, created_at: np.ndarray, train_users: np.ndarray,
                    train_timestamps: np.ndarray, split_time: int,
                    rules: SegmentRules = SegmentRules()) -> Dict[str, np.ndarray]:
  """Segment masks of users 0..num_users-1.

  Args:
    created_at: [U] unix seconds of account creation, < 0 when unknown.
    train_users: [T] user index of each train swipe (the swiper); train_timestamps: [T].
    split_time: the train/eval boundary T (unix seconds).
  Returns:
    name -> [U] bool for "all", "new", "active", "long_time".
  """
  train_users = np.asarray(train_users, np.int64)
  train_timestamps = np.asarray(train_timestamps, np.int64)
  swipes = np.bincount(train_users, minlength=num_users)
  recent = train_timestamps >= split_time - rules.active_window_days * SECONDS_PER_DAY
  recent_swipes = np.bincount(train_users[recent], minlength=num_users)
  first_swipe = np.full(num_users, np.iinfo(np.int64).max)
  np.minimum.at(first_swipe, train_users, train_timestamps)
  created = np.where(np.asarray(created_at) >= 0, created_at, first_swipe)
  long_time = (swipes > 0) | (np.asarray(created_at) >= 0)
  long_time &= created <= split_time - rules.long_time_days * SECONDS_PER_DAY
  return {"all": np.ones(num_users, bool), "new": swipes == 0,
          "active": recent_swipes >= rules.active_min_swipes, "long_time": long_time}
