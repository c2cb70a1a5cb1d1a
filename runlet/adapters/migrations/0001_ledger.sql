-- The ledger (DESIGN.md §7): accounts, nodes, jobs and every state change of every job.
--
-- It holds only ids, names, states, times, exit codes, signals, a short detail, and where a
-- job's log is stored with its hash. Never a command, an environment, input or output, sealed
-- or not: no column here is meant for them, and tests/integration/test_database.py checks it.
--
-- Times are timestamptz (Python sees unix floats, to the microsecond). The owning user is a
-- plain text column (`user_name`, since `user` is reserved), not a foreign key: `users` lists
-- the accounts made by `runlet user add`, events are recorded in whatever order they arrive,
-- and removing an account keeps its history.
--
-- Applied once and never edited afterwards: a change is a new numbered file.

CREATE TABLE users (
    name        text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (user, node): what its last heartbeat said. `last_seen` is the server's clock
-- when the heartbeat arrived; a node's own clock is not trusted for expiry.
CREATE TABLE nodes (
    user_name  text        NOT NULL,
    name       text        NOT NULL,
    platform   text        NOT NULL,
    version    text        NOT NULL,
    tags       text[]      NOT NULL DEFAULT '{}',
    last_seen  timestamptz NOT NULL,
    running    integer     NOT NULL DEFAULT 0,
    queued     integer     NOT NULL DEFAULT 0,
    online     boolean     NOT NULL DEFAULT true,
    PRIMARY KEY (user_name, name)
);
CREATE INDEX nodes_online_by_last_seen ON nodes (last_seen) WHERE online;

-- One row per job: its current state, which is that of the highest sequence number seen
-- (`state_seq`), and the times of its milestones, whatever order the events came in.
CREATE TABLE jobs (
    user_name   text        NOT NULL,
    job_id      text        NOT NULL,
    node        text        NOT NULL,
    target      text        NOT NULL DEFAULT '',
    state       text        NOT NULL,
    state_seq   bigint      NOT NULL,
    queued_at   timestamptz,
    started_at  timestamptz,
    ended_at    timestamptz,
    exit_code   smallint,
    signal      smallint,
    detail      text,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (user_name, job_id)
);
CREATE INDEX jobs_newest_first ON jobs (user_name, updated_at DESC, job_id DESC);
CREATE INDEX jobs_by_node ON jobs (user_name, node, state);
CREATE INDEX jobs_by_state ON jobs (state);

-- Every state change, as reported by the job's node, plus `lost` when the server gave up on
-- a node: that row reuses the seq of the state it replaced, so any later event corrects it.
-- The primary key is what makes a redelivered event change nothing.
CREATE TABLE job_states (
    user_name    text        NOT NULL,
    job_id       text        NOT NULL,
    seq          bigint      NOT NULL,
    reported_by  text        NOT NULL DEFAULT 'node' CHECK (reported_by IN ('node', 'server')),
    state        text        NOT NULL,
    at           timestamptz NOT NULL,
    node         text        NOT NULL,
    exit_code    smallint,
    signal       smallint,
    detail       text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, job_id, seq, reported_by)
);

-- Where a job's sealed log is stored and its hash; kept apart from `jobs` so that a log
-- reported before the job's first state change is not lost. The latest report wins.
CREATE TABLE job_logs (
    user_name   text        NOT NULL,
    job_id      text        NOT NULL,
    log_key     text        NOT NULL,
    log_hash    text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, job_id)
);
