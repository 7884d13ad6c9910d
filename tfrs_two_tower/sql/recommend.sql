-- Two-tower embeddings in PostgreSQL (pgvector) and the recommend() RPC.
--
-- publish_embeddings.py writes each model version into its own pair of tables
--   tt_query_embeddings_<version>(id text primary key, embedding vector(d))
--   tt_candidate_embeddings_<version>(id text primary key, embedding vector(d))  + HNSW index
-- and then, in one transaction, points tt_active_model at it. A reader (recommend) resolves
-- the active version once per call, so it never sees a half-published version.
-- Idempotent: safe to run again.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS tt_model_versions (
  version       text PRIMARY KEY,            -- 'v' + 12 hex digits of sha256(run_id)
  run_id        text NOT NULL,
  dim           integer NOT NULL,
  temperature   real NOT NULL,
  calibration_scale real NOT NULL,           -- P(like) = sigmoid(scale * dot + bias)
  calibration_bias  real NOT NULL,
  config_hash   text NOT NULL,
  candidates    integer NOT NULL,
  queries       integer NOT NULL,
  published_at  timestamptz NOT NULL DEFAULT now()
);

-- exposure.hubness_beta * the mean query embedding of the version (NULL: beta 0): recommend()
-- ranks by (q_u - hubness_offset) . c_v = s(u, v) - beta * qbar . c_v, a penalty on the
-- candidates close to everyone (hubs); the scores it returns stay s(u, v).
ALTER TABLE tt_model_versions ADD COLUMN IF NOT EXISTS hubness_offset vector;

-- Exactly one row: the version recommend() serves.
CREATE TABLE IF NOT EXISTS tt_active_model (
  singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  version       text NOT NULL REFERENCES tt_model_versions(version),
  switched_at   timestamptz NOT NULL DEFAULT now()
);

-- Generated from the config (serving/schema_sql.py fills the {{placeholders}} with quoted
-- identifiers and literals): who may be shown to whom, and what a like is. Every recommend
-- variant filters through tt_eligible, so the rules live in one place.

-- tt_eligible(user_id, candidate_ids, age_window): the candidates among `candidate_ids` that
-- user_id may be shown under the config's `eligibility` rules (mutual preference, age, distance,
-- blocked pairs, inactive users, self, already swiped). age_window, when not NULL, replaces the
-- config's age rule by a fixed window of that many years. The bodies name parameters by
-- position ($1): in SQL functions a column of the same name would win over a parameter name.
DROP FUNCTION IF EXISTS tt_eligible(text, text[], integer);
CREATE FUNCTION tt_eligible(user_id text, candidate_ids text[], age_window integer)
RETURNS TABLE (candidate_id text)
LANGUAGE sql STABLE AS $tt_body$
  SELECT c.{candidate_id}::text
  FROM {query_source} u
  JOIN {candidate_source} c ON c.{candidate_id} = ANY ($2::{candidate_id_type}[])
  WHERE u.{query_id} = $1::{query_id_type}
    AND {eligible}
$tt_body$;

-- tt_back_swipes(user_id): everyone who swiped on the user, with their latest swipe
-- (liked: an action of label 1 in the config; false for any other action). What the other side
-- of a pair has already said, so recommend_reciprocal need not estimate it.
DROP FUNCTION IF EXISTS tt_back_swipes(text);
CREATE FUNCTION tt_back_swipes(user_id text)
RETURNS TABLE (swiper_id text, liked boolean)
LANGUAGE sql STABLE AS $tt_body$
  {back_swipes}
$tt_body$;

-- tt_query_history(user_id): the query tower's history inputs as of now, one row per list of
-- the config's `history` section (none without it): input_name = the query tower's input
-- (query_history_<list>), candidate_ids = the user's last max_length candidates of that list,
-- most recent first (latest swipe per pair, as the export builds them). With a history the
-- published query embedding goes stale as the user swipes: the app computes a fresh one from
-- these lists and the profile (Core ML query tower or the query SavedModel) and passes it to
-- recommend(..., query_embedding). Index: (query id, timestamp, candidate id) of the swipes
-- table (serving/history_sql.py: index_statement).
DROP FUNCTION IF EXISTS tt_query_history(text);
CREATE FUNCTION tt_query_history(user_id text)
RETURNS TABLE (input_name text, candidate_ids text[])
LANGUAGE sql STABLE AS $tt_body$
  {query_history}
$tt_body$;

-- Exposure control (the config's exposure.max_impressions_per_day, NULL = off): a candidate
-- already returned in that many lists today (UTC) is left out of further lists until the next
-- day. recommend() and recommend_reciprocal() count the ids they return in tt_impressions.
CREATE TABLE IF NOT EXISTS tt_impressions (
  day           date NOT NULL,
  candidate_id  text NOT NULL,
  impressions   integer NOT NULL,
  PRIMARY KEY (day, candidate_id)
);

CREATE OR REPLACE FUNCTION tt_exposure_cap() RETURNS integer
LANGUAGE sql IMMUTABLE AS $tt_body$
  SELECT {max_impressions}::integer
$tt_body$;

CREATE OR REPLACE FUNCTION tt_record_impressions(ids text[]) RETURNS void
LANGUAGE sql VOLATILE AS $tt_body$
  INSERT INTO tt_impressions AS t (day, candidate_id, impressions)
  SELECT (now() AT TIME ZONE 'UTC')::date, i, 1 FROM unnest($1) AS i
  WHERE tt_exposure_cap() IS NOT NULL
  ON CONFLICT (day, candidate_id) DO UPDATE SET impressions = t.impressions + 1
$tt_body$;

-- tt_ranked(user_id, k, age_window, exact, pool, admirers, query_embedding): the body of
-- recommend() below (the nearest candidates by the hubness-adjusted dot product, then
-- tt_eligible); the query embedding is query_embedding when given (computed at request time,
-- e.g. with the user's latest history), else the published one;
-- with `admirers`, everyone whose latest swipe on the user is a like is returned too,
-- beyond the top k, whatever their dot product (the reciprocal ranking must see them).
DROP FUNCTION IF EXISTS tt_ranked(text, integer, integer, boolean, integer, boolean);
CREATE OR REPLACE FUNCTION tt_ranked(user_id text, k integer, age_window integer,
                                     exact boolean, pool integer, admirers boolean,
                                     query_embedding real[] DEFAULT NULL)
RETURNS TABLE (candidate_id text, score real)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v text;
  d integer;
  q vector;
  q_rank vector;
  offset_ vector;
BEGIN
  SELECT a.version, m.hubness_offset, m.dim INTO v, offset_, d
  FROM tt_active_model a JOIN tt_model_versions m USING (version);
  IF v IS NULL THEN
    RAISE EXCEPTION 'no model published: run publish_embeddings.py';
  END IF;
  IF query_embedding IS NOT NULL THEN
    IF cardinality(query_embedding) <> d THEN
      RAISE EXCEPTION 'query_embedding has % values, model version % has dimension %',
        cardinality(query_embedding), v, d;
    END IF;
    q := query_embedding::vector;
  ELSE
    EXECUTE format('SELECT embedding FROM %I WHERE id = $1', 'tt_query_embeddings_' || v)
      INTO q USING user_id;
  END IF;
  IF q IS NULL THEN
    RAISE EXCEPTION 'user % has no query embedding in model version %', user_id, v;
  END IF;
  q_rank := CASE WHEN offset_ IS NULL THEN q ELSE q - offset_ END;
  IF exact THEN
    PERFORM set_config('enable_indexscan', 'off', true);
  ELSE
    PERFORM set_config('hnsw.ef_search', least(greatest(pool, 40), 1000)::text, true);
  END IF;
  RETURN QUERY EXECUTE format($q$
    WITH nearest AS MATERIALIZED (
      SELECT c.id, (c.embedding <#> $1) AS neg_rank, (c.embedding <#> $7) AS neg_ip,
             false AS admirer
      FROM %1$I c
      ORDER BY c.embedding <#> $1
      LIMIT $2),
    liked_me AS (
      SELECT c.id, (c.embedding <#> $1) AS neg_rank, (c.embedding <#> $7) AS neg_ip,
             true AS admirer
      FROM tt_back_swipes($3) b JOIN %1$I c ON c.id = b.swiper_id
      WHERE $6 AND b.liked),
    pooled AS MATERIALIZED (SELECT * FROM nearest UNION ALL SELECT * FROM liked_me),
    eligible AS (
      SELECT n.id, n.neg_rank, n.neg_ip, n.admirer
      FROM pooled n
      WHERE n.id IN (SELECT e.candidate_id
                     FROM tt_eligible($3, ARRAY(SELECT p.id FROM pooled p), $4) e)
        AND (tt_exposure_cap() IS NULL
             OR NOT EXISTS (SELECT 1 FROM tt_impressions i
                            WHERE i.day = (now() AT TIME ZONE 'UTC')::date
                              AND i.candidate_id = n.id
                              AND i.impressions >= tt_exposure_cap()))),
    top AS (
      SELECT e.id, e.neg_rank, e.neg_ip FROM eligible e WHERE NOT e.admirer
      ORDER BY e.neg_rank, e.id
      LIMIT $5)
    SELECT r.id, (-r.neg_ip)::real
    FROM (SELECT * FROM top
          UNION SELECT e.id, e.neg_rank, e.neg_ip FROM eligible e WHERE e.admirer) r
    ORDER BY r.neg_rank, r.id$q$, 'tt_candidate_embeddings_' || v)
  USING q_rank, CASE WHEN exact THEN NULL ELSE pool END, user_id, age_window, k, admirers, q;
END;
$$;

-- recommend(user_id, k): the top k candidates for user_id by the active model's dot product
-- q_u . c_v, among the candidates tt_eligible lets through (the config's rules; age_window
-- overrides its age rule when given) and under the exposure cap. exact => brute force
-- (sequential scan; the reference); otherwise the HNSW index returns the `pool` nearest
-- candidates, which are then filtered (pgvector before 0.8 filters after the index scan, so
-- pool must exceed k by the filtered-out share). Counts its list in tt_impressions when the
-- cap is on (then call it in a read-write transaction and commit). query_embedding: the user's
-- query embedding computed at request time (with a history: from tt_query_history's lists),
-- instead of the published one.
DROP FUNCTION IF EXISTS recommend(text, integer, integer, boolean, integer);
CREATE OR REPLACE FUNCTION recommend(user_id text, k integer DEFAULT 20,
                                     age_window integer DEFAULT NULL,
                                     exact boolean DEFAULT false,
                                     pool integer DEFAULT 400,
                                     query_embedding real[] DEFAULT NULL)
RETURNS TABLE (candidate_id text, score real)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  listed text[] := '{{}}';
BEGIN
  FOR candidate_id, score IN SELECT * FROM tt_ranked(user_id, k, age_window, exact, pool, false,
                                                    query_embedding)
  LOOP
    listed := listed || candidate_id;
    RETURN NEXT;
  END LOOP;
  PERFORM tt_record_impressions(listed);
END;
$$;

-- recommend_reciprocal(user_id, k): ranks for matches, not just likes. The one-way pool of
-- recommend() (its top `pool`), plus everyone who already liked the user, is re-scored by
-- combining P(u likes v) = sigmoid(scale * q_u.c_v + bias) and P(v likes u): 1 / 0 when v's
-- latest swipe on u is a like / a pass, else sigmoid(scale * q_v.c_u + bias) from the same
-- towers, with the calibration (scale, bias) published with the version. combination:
-- 'product' (P(match) under independence; what a match rate rewards) or 'harmonic' (RECON).
-- The exposure cap applies to the one-way pool, and the list is counted as recommend()'s.
DROP FUNCTION IF EXISTS recommend_reciprocal(text, integer, integer, boolean, integer);
CREATE OR REPLACE FUNCTION recommend_reciprocal(user_id text, k integer DEFAULT 20,
                                                age_window integer DEFAULT NULL,
                                                exact boolean DEFAULT false,
                                                pool integer DEFAULT 400,
                                                combination text DEFAULT 'product')
RETURNS TABLE (candidate_id text, score real)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v text;
  a real;
  b real;
  listed text[] := '{{}}';
BEGIN
  IF NOT {reciprocal} THEN
    RAISE EXCEPTION 'recommend_reciprocal needs users on both sides '
                    '(the config ranks another entity)';
  END IF;
  IF combination IS NULL OR combination NOT IN ('product', 'harmonic') THEN
    RAISE EXCEPTION 'combination must be ''product'' or ''harmonic'', got %', combination;
  END IF;
  SELECT m.version, m.calibration_scale, m.calibration_bias INTO v, a, b
  FROM tt_active_model t JOIN tt_model_versions m USING (version);
  FOR candidate_id, score IN EXECUTE format($q$
    WITH one_way AS (
      SELECT r.candidate_id, r.score FROM tt_ranked($1, $2, $3, $4, $2, true) r),
    both_ways AS (
      SELECT o.candidate_id,
             1 / (1 + exp(-($5 * o.score + $6))) AS p_forward,
             CASE WHEN bs.liked THEN 1.0
                  WHEN NOT bs.liked THEN 0.0
                  ELSE 1 / (1 + exp(-($5 * -(qv.embedding <#> cu.embedding) + $6))) END AS p_back
      FROM one_way o
      JOIN %I qv ON qv.id = o.candidate_id
      JOIN %I cu ON cu.id = $1
      LEFT JOIN tt_back_swipes($1) bs ON bs.swiper_id = o.candidate_id)
    SELECT w.candidate_id,
           (CASE WHEN $8 = 'product' THEN w.p_forward * w.p_back
                 ELSE 2 * w.p_forward * w.p_back / greatest(w.p_forward + w.p_back, 1e-12)
            END)::real
    FROM both_ways w
    ORDER BY 2 DESC, 1
    LIMIT $7$q$, 'tt_query_embeddings_' || v, 'tt_candidate_embeddings_' || v)
  USING user_id, pool, age_window, exact, a, b, k, combination
  LOOP
    listed := listed || candidate_id;
    RETURN NEXT;
  END LOOP;
  PERFORM tt_record_impressions(listed);
END;
$$;
