-- The default schema of the dating app (PostgreSQL >= 13, Supabase included).
-- Column names match tfrs_two_tower/default_config.json and the synthetic world
-- (World.profiles, World.swipes). Idempotent: safe to run again.
-- Real projects may differ: the config maps every table and column name, or
-- replaces a table by a query (entities.<name>.sql, interactions.sql).

CREATE TABLE IF NOT EXISTS profiles (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  gender      text,                     -- man | woman | nonbinary
  seeking     text,                     -- men | women | everyone
  age         integer CHECK (age BETWEEN 18 AND 120),
  city        text,
  latitude    double precision CHECK (latitude BETWEEN -90 AND 90),
  longitude   double precision CHECK (longitude BETWEEN -180 AND 180),
  interests   text[] NOT NULL DEFAULT '{}',
  photo_count integer NOT NULL DEFAULT 0,
  verified    boolean NOT NULL DEFAULT false,
  bio_length  integer NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per swipe. No uniqueness on (swiper_id, swipee_id): an app may let a
-- user swipe again; the export keeps the latest swipe of each pair and counts
-- the others. Actions are free text so that a new action (e.g. 'block') does
-- not break the app; the export maps actions through the config.
CREATE TABLE IF NOT EXISTS swipes (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  swiper_id   uuid NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
  swipee_id   uuid NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
  action      text NOT NULL,            -- like | superlike | pass
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS swipes_pair_time_idx ON swipes (swiper_id, swipee_id, created_at);
CREATE INDEX IF NOT EXISTS swipes_swipee_idx ON swipes (swipee_id);

-- A match is a mutual like (superlikes count as likes), on each user's latest
-- swipe of the other; one row per pair (user_a < user_b).
CREATE OR REPLACE VIEW matches AS
WITH latest AS (
  SELECT DISTINCT ON (swiper_id, swipee_id) swiper_id, swipee_id, action, created_at
  FROM swipes
  ORDER BY swiper_id, swipee_id, created_at DESC, action DESC
)
SELECT a.swiper_id AS user_a, a.swipee_id AS user_b,
       greatest(a.created_at, b.created_at) AS matched_at
FROM latest a
JOIN latest b ON b.swiper_id = a.swipee_id AND b.swipee_id = a.swiper_id
WHERE a.action IN ('like', 'superlike') AND b.action IN ('like', 'superlike')
  AND a.swiper_id < a.swipee_id;
