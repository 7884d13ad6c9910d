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
  version       text PRIMARY KEY,            -- derived from the run id: [a-z0-9_]
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

-- Exactly one row: the version recommend() serves.
CREATE TABLE IF NOT EXISTS tt_active_model (
  singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  version       text NOT NULL REFERENCES tt_model_versions(version),
  switched_at   timestamptz NOT NULL DEFAULT now()
);

-- The hard filters of the dating app, shared by every recommend variant:
-- mutual gender/seeking compatibility and an age window.
CREATE OR REPLACE FUNCTION tt_seeks(seeking text, gender text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT seeking = 'everyone'
      OR (seeking = 'men' AND gender = 'man')
      OR (seeking = 'women' AND gender = 'woman')
$$;

-- recommend(user_id, k): the top k candidates for user_id by the active model's dot product
-- q_u . c_v, excluding the user, everyone they already swiped on, and profiles that fail the
-- hard filters. exact => brute force (sequential scan; the reference); otherwise the HNSW
-- index returns the `pool` nearest candidates, which are then filtered (pgvector before 0.8
-- filters after the index scan, so pool must exceed k by the filtered-out share).
CREATE OR REPLACE FUNCTION recommend(user_id text, k integer DEFAULT 20,
                                     age_window integer DEFAULT 10, exact boolean DEFAULT false,
                                     pool integer DEFAULT 400)
RETURNS TABLE (candidate_id text, score real)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v text;
  q vector;
  my_gender text;
  my_seeking text;
  my_age integer;
BEGIN
  SELECT a.version INTO v FROM tt_active_model a;
  IF v IS NULL THEN
    RAISE EXCEPTION 'no model published: run publish_embeddings.py';
  END IF;
  EXECUTE format('SELECT embedding FROM %I WHERE id = $1', 'tt_query_embeddings_' || v)
    INTO q USING user_id;
  IF q IS NULL THEN
    RAISE EXCEPTION 'user % has no query embedding in model version %', user_id, v;
  END IF;
  SELECT p.gender, p.seeking, p.age INTO my_gender, my_seeking, my_age
  FROM profiles p WHERE p.id::text = user_id;
  IF exact THEN
    PERFORM set_config('enable_indexscan', 'off', true);
  ELSE
    PERFORM set_config('hnsw.ef_search', least(greatest(pool, 40), 1000)::text, true);
  END IF;
  RETURN QUERY EXECUTE format($q$
    WITH nearest AS MATERIALIZED (
      SELECT c.id, (c.embedding <#> $1) AS neg_ip
      FROM %I c
      ORDER BY c.embedding <#> $1
      LIMIT $2)
    SELECT n.id, (-n.neg_ip)::real
    FROM nearest n JOIN profiles p ON p.id::text = n.id
    WHERE n.id <> $3
      AND tt_seeks($4, p.gender) AND tt_seeks(p.seeking, $5)
      AND abs(p.age - $6) <= $7
      AND NOT EXISTS (SELECT 1 FROM swipes s
                      WHERE s.swiper_id::text = $3 AND s.swipee_id::text = n.id)
    ORDER BY n.neg_ip, n.id
    LIMIT $8$q$, 'tt_candidate_embeddings_' || v)
  USING q, CASE WHEN exact THEN NULL ELSE pool END, user_id, my_seeking, my_gender, my_age,
        age_window, k;
END;
$$;

-- recommend_reciprocal(user_id, k): ranks for matches, not just likes. The one-way pool from
-- recommend() is re-scored by the harmonic mean (RECON) of P(u likes v) and P(v likes u),
-- both from the same towers: sigmoid(scale * q_u.c_v + bias) and sigmoid(scale * q_v.c_u +
-- bias), with the calibration (scale, bias) published with the version.
CREATE OR REPLACE FUNCTION recommend_reciprocal(user_id text, k integer DEFAULT 20,
                                                age_window integer DEFAULT 10,
                                                exact boolean DEFAULT false,
                                                pool integer DEFAULT 400)
RETURNS TABLE (candidate_id text, score real)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v text;
  a real;
  b real;
BEGIN
  SELECT m.version, m.calibration_scale, m.calibration_bias INTO v, a, b
  FROM tt_active_model t JOIN tt_model_versions m USING (version);
  RETURN QUERY EXECUTE format($q$
    WITH one_way AS (
      SELECT r.candidate_id, r.score FROM recommend($1, $2, $3, $4, $2) r),
    both_ways AS (
      SELECT o.candidate_id,
             1 / (1 + exp(-($5 * o.score + $6))) AS p_forward,
             1 / (1 + exp(-($5 * -(qv.embedding <#> cu.embedding) + $6))) AS p_back
      FROM one_way o
      JOIN %I qv ON qv.id = o.candidate_id
      JOIN %I cu ON cu.id = $1)
    SELECT w.candidate_id, (2 * w.p_forward * w.p_back / (w.p_forward + w.p_back))::real
    FROM both_ways w
    ORDER BY 2 DESC, 1
    LIMIT $7$q$, 'tt_query_embeddings_' || v, 'tt_candidate_embeddings_' || v)
  USING user_id, pool, age_window, exact, a, b, k;
END;
$$;
