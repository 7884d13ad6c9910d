"""Per-exposed-user outcomes from exposures and swipes, for CSV input.

The same definitions as the `ab_user_outcomes` and `ab_user_matches` views in
sql/abtest.sql (a test checks both agree on the same data):
  * the swipes are the config's interactions (its column names in the CSV);
    likes given / received are the actions of label 1 in interactions.actions,
    and an action value the config does not map is refused (as by the export);
  * a match is a mutual like on each user's LATEST swipe of the other (ties:
    the greater action), made at the later of the two swipes;
  * outcomes count in [first_exposed_at, ends_at); pre-period counts
    (CUPED covariates) in [starts_at - pre_period, starts_at).
"""

from typing import Sequence

import numpy as np
import pandas as pd

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import metrics as metrics_lib
from tfrs_two_tower.data import sources

EXPOSURE_COLUMNS = ("user_id", "arm", "first_exposed_at")
_NEVER = pd.Timestamp.max.tz_localize("UTC")


class InputError(ValueError):
  """Exposure or swipe input that cannot be analysed; the message names file and column."""


def _require(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
  missing = [c for c in columns if c not in frame.columns]
  if missing:
    raise InputError(f"{source}: missing column(s) {missing}; has {list(frame.columns)}")


def _times(values: pd.Series, source: str, column: str) -> pd.Series:
  parsed = pd.to_datetime(values, utc=True, format="mixed", errors="coerce")
  if parsed.isna().any():
    row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
    raise InputError(f"{source}: column {column!r} row {row}: not a time: {values.iloc[row]!r}")
  return parsed


def clean_exposures(frame: pd.DataFrame, source: str, experiment: str = "") -> pd.DataFrame:
  """Exposure rows -> one row per user (earliest exposure), typed columns.

  A CSV may hold several experiments: with an `experiment` column, rows of
  other experiments are dropped. A user logged in two arms is an error.
  """
  _require(frame, EXPOSURE_COLUMNS, source)
  if "experiment" in frame.columns and experiment:
    frame = frame[frame["experiment"].astype(str) == experiment]
  out = pd.DataFrame({"user_id": frame["user_id"].astype(str).to_numpy(),
                      "arm": frame["arm"].astype(str).to_numpy(),
                      "first_exposed_at": _times(frame["first_exposed_at"], source,
                                                 "first_exposed_at").to_numpy()})
  arms_per_user = out.groupby("user_id")["arm"].nunique()
  if (arms_per_user > 1).any():
    user = arms_per_user.index[arms_per_user.to_numpy() > 1][0]
    raise InputError(f"{source}: user {user!r} is exposed in more than one arm")
  return (out.sort_values("first_exposed_at").drop_duplicates("user_id")
          .reset_index(drop=True))


def clean_swipes(frame: pd.DataFrame, source: str, config: config_lib.Config) -> pd.DataFrame:
  """Interaction rows (the config's column names) -> swiper_id, swipee_id, action, is_like,
  created_at.

  Raises:
    InputError for a missing column or a bad time; sources.UnknownActionError
    (exit code 16, like the export) naming every action value the config does
    not map and its count.
  """
  cfg = config.interactions
  columns = (cfg.query_id_column, cfg.candidate_id_column, cfg.action_column,
             cfg.timestamp_column)
  _require(frame, columns, source)
  actions = frame[cfg.action_column].astype(str)
  sources.check_actions(config, actions.value_counts().to_dict(), source)
  likes = {a.name for a in cfg.actions if a.label == 1}
  return pd.DataFrame({
      "swiper_id": frame[cfg.query_id_column].astype(str).to_numpy(),
      "swipee_id": frame[cfg.candidate_id_column].astype(str).to_numpy(),
      "action": actions.to_numpy(), "is_like": actions.isin(likes).to_numpy(),
      "created_at": _times(frame[cfg.timestamp_column], source, cfg.timestamp_column).to_numpy()})


def _windowed_counts(exposed: pd.DataFrame, events: pd.DataFrame, key: str, time: str,
                     columns: dict, definition: definition_lib.Definition) -> pd.DataFrame:
  """Counts events per exposed user, after exposure and in the pre-period.

  `columns` maps output name -> (boolean column of `events` or None for all, "post"|"pre").
  """
  joined = exposed[["user_id", "first_exposed_at"]].merge(events, left_on="user_id",
                                                          right_on=key)
  t = joined[time]
  ends = definition.ends_at if definition.ends_at is not None else _NEVER
  post = (t >= joined["first_exposed_at"]) & (t < ends)
  pre = (t >= definition.pre_starts_at) & (t < definition.starts_at) & (t < ends)
  counts = pd.DataFrame({"user_id": joined["user_id"]})
  for name, (flag, window) in columns.items():
    mask = post if window == "post" else pre
    counts[name] = (mask & joined[flag]) if flag else mask
  return counts.groupby("user_id").sum().astype(np.int64)


def user_outcomes(exposures: pd.DataFrame, swipes: pd.DataFrame,
                  definition: definition_lib.Definition) -> pd.DataFrame:
  """One row per exposed user: user_id, arm, first_exposed_at, outcome and pre_* counts.

  Args:
    exposures: `clean_exposures` output.
    swipes: `clean_swipes` output (all swipes; the windows select).
  """
  latest = (swipes.sort_values(["created_at", "action"], kind="stable")
            .drop_duplicates(["swiper_id", "swipee_id"], keep="last"))
  likes = latest.loc[latest["is_like"], ["swiper_id", "swipee_id", "created_at"]]
  back = likes.rename(columns={"swiper_id": "swipee_id", "swipee_id": "swiper_id",
                               "created_at": "back_at"})
  matches = likes.merge(back, on=["swiper_id", "swipee_id"])  # both directions of each pair
  matches["matched_at"] = np.maximum(matches["created_at"], matches["back_at"])
  given = _windowed_counts(exposures, swipes, "swiper_id", "created_at", {
      "swipes": (None, "post"), "likes_given": ("is_like", "post"),
      "pre_swipes": (None, "pre"), "pre_likes_given": ("is_like", "pre")}, definition)
  received = _windowed_counts(exposures, swipes[swipes["is_like"]], "swipee_id", "created_at", {
      "likes_received": (None, "post"), "pre_likes_received": (None, "pre")}, definition)
  matched = _windowed_counts(exposures, matches, "swiper_id", "matched_at", {
      "matches": (None, "post"), "pre_matches": (None, "pre")}, definition)
  out = exposures.set_index("user_id").join([given, received, matched])
  columns = metrics_lib.OUTCOME_COLUMNS + metrics_lib.PRE_COLUMNS
  out[list(columns)] = out[list(columns)].fillna(0).astype(np.int64)
  return out.reset_index()[["user_id", "arm", "first_exposed_at", *columns]]
