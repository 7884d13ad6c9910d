"""Is there enough history to train a two-tower model? The users' own gate.

The users start Phase 3 at >= 500 users and >= 5,000 interactions and call it too
early below ~100 users / ~1,000 interactions. "Users" here are the query
entities that swiped at least once (profiles that never swiped teach the query
tower nothing), "interactions" every like/pass/superlike kept by the export.
"""

from typing import Dict, Mapping

import numpy as np

DEFAULT_MIN_USERS = 500
DEFAULT_MIN_INTERACTIONS = 5000
TOO_EARLY_USERS = 100
TOO_EARLY_INTERACTIONS = 1000
SECONDS_PER_WEEK = 7 * 24 * 3600


def readiness_report(interactions_per_user: np.ndarray, positives: int, negatives: int,
                     weekly_interactions: Mapping[int, int], weekly_new_users: Mapping[int, int],
                     min_users: int = DEFAULT_MIN_USERS,
                     min_interactions: int = DEFAULT_MIN_INTERACTIONS) -> Dict[str, object]:
  """Readiness report against the gate.

  Args:
    interactions_per_user: [num_query_entities] interactions made by each query
      entity (zeros allowed; they are not counted as users).
    positives, negatives: interactions labelled 1 (like, superlike) and 0 (pass).
    weekly_interactions: week index (unix time // week) -> interactions.
    weekly_new_users: week index -> query entities created that week.
    min_users, min_interactions: the gate.
  Returns:
    A JSON-able dict with `verdict` ("ready", "not_yet" or "too_early"),
    `reasons` (one line per failed check), `warnings`, `advice` (what can help),
    `feedback` ("implicit" when there are likes but no passes: accepted, with a
    warning, since likes-only data still trains the retrieval softmax) and the
    figures behind them.
  """
  per_user = np.asarray(interactions_per_user)
  active = per_user[per_user > 0]
  users, interactions = int(active.size), int(positives + negatives)
  positive_rate = positives / interactions if interactions else 0.0
  reasons, warnings = [], []
  if users < min_users:
    reasons.append(f"{users} users swiped; the gate needs >= {min_users}")
  if interactions < min_interactions:
    reasons.append(f"{interactions} interactions; the gate needs >= {min_interactions}")
  size_reasons = list(reasons)
  implicit = positives > 0 and negatives == 0
  if implicit:
    warnings.append("no passes: implicit feedback (likes only); training switches the "
                    "like-vs-pass loss off and AUC is not defined (recall still is)")
  elif interactions and not 0.02 <= positive_rate <= 0.98:
    reasons.append(f"like share {positive_rate:.1%}: with almost only one label there is "
                   "nothing to learn the difference from")
  if users < TOO_EARLY_USERS or interactions < TOO_EARLY_INTERACTIONS:
    verdict = "too_early"
  elif reasons:
    verdict = "not_yet"
  else:
    verdict = "ready"
  if users and np.median(active) < 5:
    warnings.append(f"median user made {np.median(active):.0f} interactions (< 5): "
                    "id embeddings will be weak; profile features carry the model")

  weeks = sorted(weekly_interactions)
  growth = None
  if len(weeks) >= 8:
    recent = sum(weekly_interactions[w] for w in weeks[-4:])
    before = sum(weekly_interactions[w] for w in weeks[-8:-4])
    growth = (recent - before) / before if before else None
    if growth is not None and growth < 0:
      warnings.append(f"interactions fell {-growth:.0%} over the last 4 weeks vs the 4 before")
  return {
      "verdict": verdict,
      "reasons": reasons,
      "advice": ("lower --min_users/--min_interactions or pass --force to export anyway"
                 if size_reasons else "pass --force to export anyway"),
      "feedback": "implicit" if implicit else "explicit",
      "warnings": warnings,
      "gate": {"min_users": min_users, "min_interactions": min_interactions},
      "users": users,
      "interactions": interactions,
      "likes": int(positives),
      "passes": int(negatives),
      "like_share": round(positive_rate, 4),
      "interactions_per_user": {
          "mean": round(float(active.mean()), 2) if users else 0.0,
          "median": float(np.median(active)) if users else 0.0,
          "p10": float(np.percentile(active, 10)) if users else 0.0,
          "p90": float(np.percentile(active, 90)) if users else 0.0,
          "share_with_at_least_5": round(float((active >= 5).mean()), 4) if users else 0.0,
      },
      "growth": {
          "weeks": len(weeks),
          "last_4_weeks_vs_previous_4": None if growth is None else round(growth, 4),
          "weekly_interactions": {str(w * SECONDS_PER_WEEK): int(weekly_interactions[w])
                                  for w in weeks},
          "weekly_new_users": {str(w * SECONDS_PER_WEEK): int(n)
                               for w, n in sorted(weekly_new_users.items())},
      },
  }


def format_readiness(report: Mapping[str, object]) -> str:
  """One human paragraph for logs and the pipeline summary."""
  ipu = report["interactions_per_user"]
  lines = [f"readiness: {report['verdict'].upper()} — {report['users']} users, "
           f"{report['interactions']} interactions (gate: >= {report['gate']['min_users']} "
           f"users, >= {report['gate']['min_interactions']} interactions), like share "
           f"{report['like_share']:.1%}, median {ipu['median']:.0f} interactions/user"]
  lines += [f"  not met: {r}" for r in report["reasons"]]
  lines += [f"  warning: {w}" for w in report["warnings"]]
  return "\n".join(lines)
