-- The feed's impressions log of the default schema (docs/data.md), created by
-- seeding when the world it writes has one: one row per profile a feed
-- considered when a user opened the app, with the probability that the feed
-- showed it. Column names match tfrs_two_tower/default_config.json (`impressions`).
-- Not part of schema.sql: a database without this table has no log, and the
-- export says so instead of writing an empty one. Idempotent.
CREATE TABLE IF NOT EXISTS feed_impressions (
  feed_id     bigint NOT NULL,           -- one app open
  viewer_id   uuid NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
  profile_id  uuid NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
  shown_at    timestamptz NOT NULL,
  position    integer NOT NULL CHECK (position >= 0),
  score       double precision NOT NULL,
  propensity  double precision NOT NULL CHECK (propensity > 0 AND propensity <= 1),
  shown       boolean NOT NULL,
  PRIMARY KEY (feed_id, profile_id)
);
-- Optional reciprocal probes (docs/data.md): NULL in a log without them; a config declaring
-- `impressions.probe_column` / `probe_propensity_column` reads them.
ALTER TABLE feed_impressions
  ADD COLUMN IF NOT EXISTS probed boolean,
  ADD COLUMN IF NOT EXISTS probe_propensity double precision;
