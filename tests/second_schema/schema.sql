-- A second app schema for the tests: other table and column names than the default
-- (members/votes/blocks), capitalised enum values (Male/Female/NonBinary, Like/Superlike/Pass),
-- an array-valued seeking column (looking_for text[]) and each member's own age range
-- (min_age/max_age). config.json beside this file maps it.
CREATE TABLE members (
  member_id    text PRIMARY KEY,
  sex          text,
  looking_for  text[],
  age_years    integer,
  min_age      integer,
  max_age      integer,
  town         text,
  lat          double precision,
  lng          double precision,
  hobbies      text[] NOT NULL DEFAULT '{}',
  pics         integer NOT NULL DEFAULT 0,
  is_verified  boolean NOT NULL DEFAULT false,
  bio_chars    integer NOT NULL DEFAULT 0,
  joined_at    timestamptz NOT NULL,
  last_seen_at timestamptz
);

CREATE TABLE votes (
  vote_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  voter    text NOT NULL REFERENCES members (member_id),
  target   text NOT NULL REFERENCES members (member_id),
  verdict  text NOT NULL,
  ts       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX votes_pair ON votes (voter, target, ts);
CREATE INDEX votes_target ON votes (target);

CREATE TABLE blocks (
  blocker  text NOT NULL REFERENCES members (member_id),
  blocked  text NOT NULL REFERENCES members (member_id),
  PRIMARY KEY (blocker, blocked)
);
