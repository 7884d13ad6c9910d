-- A/B testing for the dating app: assignment, exposure logging, outcomes.
--
-- PostgreSQL >= 11 (Supabase: 15). Idempotent: safe to run again after edits.
-- A template: abtest/database.py fills the {{placeholders}} from the config (the interactions
-- table or query and its columns, quoted; the actions of label 1 as likes). Ids may be uuid or
-- text: the experiment tables store them as text and the views compare id::text.
--
-- Assignment (docs/abtest.md has the spec, test vectors and a Swift version):
--   bucket = first 8 bytes of SHA-256(UTF-8(salt || ':' || user_id)), read as a
--            big-endian unsigned 64-bit integer, mod 10000
--   arm    = the first arm (in the order of experiments.arms) whose cumulative
--            bucket count exceeds the bucket.

-- ---------------------------------------------------------------- assignment

CREATE OR REPLACE FUNCTION ab_bucket(salt text, user_id text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  -- bit(64)::bigint reads the 8 bytes as a SIGNED integer v. The unsigned value
  -- is v + 2^64 when v < 0, and 2^64 mod 10000 = 1616; `%` keeps the sign of v,
  -- hence the + 10000 before the final mod.
  SELECT (((v % 10000) + 10000 + CASE WHEN v < 0 THEN 1616 ELSE 0 END) % 10000)::integer
  FROM (SELECT ('x' || encode(substring(sha256(convert_to(salt || ':' || user_id, 'UTF8'))
                                        FROM 1 FOR 8), 'hex'))::bit(64)::bigint AS v) AS h
$$;

-- Arms: a JSON array, in order, of {{"name": text, "buckets": int}}, counts summing to 10000.
CREATE OR REPLACE FUNCTION ab_arms_valid(arms jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT jsonb_typeof(arms) = 'array'
     AND jsonb_array_length(arms) >= 2
     AND (SELECT bool_and(jsonb_typeof(a->'name') = 'string'
                          AND jsonb_typeof(a->'buckets') = 'number'
                          AND (a->>'buckets')::numeric >= 0
                          AND (a->>'buckets')::numeric = trunc((a->>'buckets')::numeric))
                 AND sum((a->>'buckets')::numeric) = 10000
                 AND count(DISTINCT a->>'name') = count(*)
          FROM jsonb_array_elements(arms) AS a)
$$;

CREATE TABLE IF NOT EXISTS ab_experiments (
  name           text PRIMARY KEY,
  salt           text NOT NULL UNIQUE CHECK (salt <> '' AND strpos(salt, ':') = 0),
  arms           jsonb NOT NULL CHECK (ab_arms_valid(arms)),  -- first arm = control
  starts_at      timestamptz NOT NULL,
  ends_at        timestamptz CHECK (ends_at IS NULL OR ends_at > starts_at),  -- NULL: running
  primary_metric text NOT NULL DEFAULT 'match_rate',
  guardrails     jsonb NOT NULL DEFAULT '["likes_received_per_user", "swipes_per_user"]'
                 CHECK (jsonb_typeof(guardrails) = 'array'),
  pre_period     interval NOT NULL DEFAULT '28 days',  -- CUPED covariates: before starts_at
  planned_users_per_arm integer CHECK (planned_users_per_arm > 0),  -- the fixed horizon (--plan)
  description    text NOT NULL DEFAULT '',
  created_at     timestamptz NOT NULL DEFAULT now()
);

-- The arm of `user_id` in `experiment`; NULL for an unknown experiment.
CREATE OR REPLACE FUNCTION ab_assign(experiment text, user_id text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
  SELECT arm.name
  FROM ab_experiments e,
       LATERAL (SELECT a.elem->>'name' AS name, a.ord,
                       sum((a.elem->>'buckets')::integer) OVER (ORDER BY a.ord) AS upper
                FROM jsonb_array_elements(e.arms) WITH ORDINALITY AS a(elem, ord)) AS arm
  WHERE e.name = experiment AND ab_bucket(e.salt, user_id) < arm.upper
  ORDER BY arm.upper, arm.ord
  LIMIT 1
$$;

-- ----------------------------------------------------------------- exposures

-- One row per (experiment, user): the arm and the FIRST time the user saw the
-- experiment's feed. Everything after first_exposed_at counts as outcome.
CREATE TABLE IF NOT EXISTS ab_exposures (
  experiment       text NOT NULL REFERENCES ab_experiments (name) ON DELETE CASCADE,
  user_id          text NOT NULL,
  arm              text NOT NULL,
  first_exposed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment, user_id)
);
CREATE INDEX IF NOT EXISTS ab_exposures_user ON ab_exposures (user_id);

-- Logs an exposure and returns the user's arm. Idempotent and order-independent:
-- repeated calls keep one row with the EARLIEST time seen (late, out-of-order
-- client events can only move first_exposed_at back). The arm always comes from
-- ab_assign, never from the caller, so logged arms cannot disagree with it.
CREATE OR REPLACE FUNCTION ab_log_exposure(experiment text, user_id text,
                                           exposed_at timestamptz DEFAULT now())
RETURNS text LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
  assigned text := ab_assign(experiment, user_id);
BEGIN
  IF assigned IS NULL THEN
    RAISE EXCEPTION 'ab_log_exposure: unknown experiment %', quote_literal(experiment);
  END IF;
  INSERT INTO ab_exposures AS x (experiment, user_id, arm, first_exposed_at)
  VALUES (experiment, user_id, assigned, exposed_at)
  ON CONFLICT ON CONSTRAINT ab_exposures_pkey DO UPDATE
    SET first_exposed_at = EXCLUDED.first_exposed_at
    WHERE EXCLUDED.first_exposed_at < x.first_exposed_at;
  RETURN assigned;
END
$$;

-- Data-quality check: exposures whose logged arm is not the assigned arm
-- (rows written around ab_log_exposure). Must be empty.
CREATE OR REPLACE VIEW ab_assignment_mismatches AS
  SELECT x.experiment, x.user_id, x.arm AS logged_arm,
         ab_assign(x.experiment, x.user_id) AS assigned_arm
  FROM ab_exposures x
  WHERE x.arm IS DISTINCT FROM ab_assign(x.experiment, x.user_id);

-- ------------------------------------------------------------------ outcomes

-- Matches: a mutual like on each user's LATEST interaction with the other (ties: the greater
-- action), made at the later of the two; one row per direction so that each user finds their
-- own. A like is an action of label 1 in the config's interactions.actions.
CREATE OR REPLACE VIEW ab_user_matches AS
WITH latest AS (
  SELECT DISTINCT ON (s.{swiper}, s.{swipee}) s.{swiper}::text AS swiper_id,
         s.{swipee}::text AS swipee_id, s.{action} IN ({positive_actions}) AS liked,
         s.{swiped_at} AS created_at
  FROM {interactions} s
  ORDER BY s.{swiper}, s.{swipee}, s.{swiped_at} DESC, s.{action} DESC
)
SELECT a.swiper_id AS user_id, a.swipee_id AS partner_id,
       greatest(a.created_at, b.created_at) AS matched_at
FROM latest a
JOIN latest b ON b.swiper_id = a.swipee_id AND b.swipee_id = a.swiper_id
WHERE a.liked AND b.liked;

-- The interactions as the outcome views read them: text ids, liked = an action of label 1.
CREATE OR REPLACE VIEW ab_swipes AS
  SELECT s.{swiper}::text AS swiper_id, s.{swipee}::text AS swipee_id,
         s.{action} IN ({positive_actions}) AS liked, s.{swiped_at} AS created_at
  FROM {interactions} s;

-- Action values the config does not map (interactions.actions): the analysis refuses to run
-- while this is not empty, rather than count them silently as non-likes.
CREATE OR REPLACE VIEW ab_unknown_actions AS
  SELECT s.{action}::text AS action, count(*) AS interactions
  FROM {interactions} s
  WHERE s.{action} IS NULL OR s.{action}::text NOT IN ({known_actions})
  GROUP BY 1;

-- Per exposed user: outcomes in [first_exposed_at, ends_at) and the same counts in
-- the pre-period [starts_at - pre_period, starts_at) as CUPED covariates. Likes
-- are interactions whose action has label 1 (ab_swipes.liked).
CREATE OR REPLACE VIEW ab_user_outcomes AS
WITH w AS (
  SELECT x.experiment, x.user_id, x.arm, x.first_exposed_at,
         coalesce(e.ends_at, 'infinity'::timestamptz) AS ends_at,
         e.starts_at - e.pre_period AS pre_starts_at, e.starts_at
  FROM ab_exposures x JOIN ab_experiments e ON e.name = x.experiment
), given AS (
  SELECT w.experiment, w.user_id,
         count(*) FILTER (WHERE s.created_at >= w.first_exposed_at) AS swipes,
         count(*) FILTER (WHERE s.created_at >= w.first_exposed_at
                            AND s.liked) AS likes_given,
         count(*) FILTER (WHERE s.created_at < w.starts_at) AS pre_swipes,
         count(*) FILTER (WHERE s.created_at < w.starts_at
                            AND s.liked) AS pre_likes_given
  FROM w JOIN ab_swipes s ON s.swiper_id = w.user_id
  WHERE s.created_at < w.ends_at
    AND (s.created_at >= w.first_exposed_at
         OR (s.created_at >= w.pre_starts_at AND s.created_at < w.starts_at))
  GROUP BY 1, 2
), received AS (
  SELECT w.experiment, w.user_id,
         count(*) FILTER (WHERE s.created_at >= w.first_exposed_at) AS likes_received,
         count(*) FILTER (WHERE s.created_at < w.starts_at) AS pre_likes_received
  FROM w JOIN ab_swipes s ON s.swipee_id = w.user_id
  WHERE s.liked AND s.created_at < w.ends_at
    AND (s.created_at >= w.first_exposed_at
         OR (s.created_at >= w.pre_starts_at AND s.created_at < w.starts_at))
  GROUP BY 1, 2
), matched AS (
  SELECT w.experiment, w.user_id,
         count(*) FILTER (WHERE m.matched_at >= w.first_exposed_at) AS matches,
         count(*) FILTER (WHERE m.matched_at < w.starts_at) AS pre_matches
  FROM w JOIN ab_user_matches m ON m.user_id = w.user_id
  WHERE m.matched_at < w.ends_at
    AND (m.matched_at >= w.first_exposed_at
         OR (m.matched_at >= w.pre_starts_at AND m.matched_at < w.starts_at))
  GROUP BY 1, 2
)
SELECT w.experiment, w.user_id, w.arm, w.first_exposed_at,
       coalesce(g.swipes, 0) AS swipes,
       coalesce(g.likes_given, 0) AS likes_given,
       coalesce(r.likes_received, 0) AS likes_received,
       coalesce(m.matches, 0) AS matches,
       coalesce(g.pre_swipes, 0) AS pre_swipes,
       coalesce(g.pre_likes_given, 0) AS pre_likes_given,
       coalesce(r.pre_likes_received, 0) AS pre_likes_received,
       coalesce(m.pre_matches, 0) AS pre_matches
FROM w
LEFT JOIN given g USING (experiment, user_id)
LEFT JOIN received r USING (experiment, user_id)
LEFT JOIN matched m USING (experiment, user_id);

-- Dashboard totals per arm (the analysis itself reads ab_user_outcomes).
CREATE OR REPLACE VIEW ab_arm_summary AS
  SELECT experiment, arm, count(*) AS exposed_users,
         sum(swipes) AS swipes, sum(likes_given) AS likes_given,
         sum(likes_received) AS likes_received, sum(matches) AS matches,
         count(*) FILTER (WHERE matches > 0) AS matched_users,
         min(first_exposed_at) AS first_exposure, max(first_exposed_at) AS last_exposure
  FROM ab_user_outcomes
  GROUP BY experiment, arm;
