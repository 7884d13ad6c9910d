"""User segments of the users' comparison table: new, active, long-time and fresh users.

All are decided at the split time T from what was known then (the swipes before
T, i.e. train + validation, and the profile's created_at), never from the eval
window. The model's training data ends at E <= T (the dataset's
`validation_time`: the validation window [E, T) is not trained on):

  new        no swipes before T at all: unseen in training. Their id is not in the
             query vocabulary (built from train swipes), so the model scores them
             through the OOV id row (trained by id dropout) and their profile.
  active     >= `active_min_swipes` swipes in the `active_window_days` before T.
  long_time  account age at T >= `long_time_days` (created_at; the first swipe
             when created_at is unknown).
  joined_after_training
             the account was created at or after E (created_at; else the first
             swipe; a user with neither before T joined after E too): the model
             never saw them; only their profile, and their swipes of [E, T) when
             the query tower reads a history, tell it who they are.
  swiped_after_training
             >= `fresh_min_swipes` swipes in [E, T): taste the model was not
             trained on but a history-reading query tower sees at ranking time.
  joined_and_swiped_after_training
             both: new since training, with swipes a history can read. Most of
             joined_after_training have none yet at T (77-89 % on the benchmark's
             three data sets), and nothing can learn their taste from nothing.

Segments overlap (an active user can be long-time); `all` holds every evaluated user.
"""

import dataclasses
from typing import Dict, Optional

import numpy as np

SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class SegmentRules:
  active_window_days: float = 28.0
  active_min_swipes: int = 20
  long_time_days: float = 90.0
  fresh_min_swipes: int = 5

  def describe(self) -> Dict[str, str]:
    return {
        "all": "every user with at least one eval swipe",
        "new": "no swipes before the split: unseen in training (cold start; id out of "
               "vocabulary)",
        "active": f">= {self.active_min_swipes} swipes in the {self.active_window_days:g} "
                  "days before the split",
        "long_time": f"account age >= {self.long_time_days:g} days at the split (created_at, "
                     "else first swipe)",
        "joined_after_training": "account created after the training data ends (validation "
                                 "time; created_at, else first swipe): unknown to the model",
        "swiped_after_training": f">= {self.fresh_min_swipes} swipes between the end of the "
                                 "training data and the split (the validation window): taste "
                                 "the model was not trained on",
        "joined_and_swiped_after_training": "both of the above: new since training, with "
                                            "swipes a swipe history reads at ranking time"}


def assign_segments(num_users: int, created_at: np.ndarray, train_users: np.ndarray,
                    train_timestamps: np.ndarray, split_time: int,
                    rules: SegmentRules = SegmentRules(),
                    training_end: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Segment masks of users 0..num_users-1.

  Args:
    created_at: [U] unix seconds of account creation, < 0 when unknown.
    train_users: [S] user index of each swipe before the split (the swiper);
      train_timestamps: [S].
    split_time: the train/eval boundary T (unix seconds).
    training_end: E, where the model's training data ends (default T: no
      validation window, so nobody swiped after training).
  Returns:
    name -> [U] bool for "all", "new", "active", "long_time",
    "joined_after_training", "swiped_after_training", "joined_and_swiped_after_training".
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
  end = split_time if training_end is None else int(training_end)
  fresh_swipes = np.bincount(train_users[train_timestamps >= end], minlength=num_users)
  joined = created >= end  # no created_at and no swipe before T: first seen after E
  swiped = fresh_swipes >= rules.fresh_min_swipes
  return {"all": np.ones(num_users, bool), "new": swipes == 0,
          "active": recent_swipes >= rules.active_min_swipes, "long_time": long_time,
          "joined_after_training": joined, "swiped_after_training": swiped,
          "joined_and_swiped_after_training": joined & swiped}
