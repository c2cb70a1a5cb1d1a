"""The SQL statements of the ledger store (runlet.adapters.ledger_db), and nothing else.

Tables and columns are fixed here; every value is a `$n` parameter, never formatted in. The
schema they run on is made by runlet/adapters/migrations/ (see ledger_migrations).
"""

from __future__ import annotations

INSERT_STATE = """
INSERT INTO job_states (user_name, job_id, seq, state, at, node, exit_code, signal, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
RETURNING true"""

# Milestone times fill in whatever the order; the current state moves only to a higher seq.
UPSERT_JOB = """
INSERT INTO jobs AS j (user_name, job_id, state_seq, state, updated_at, node,
                       exit_code, signal, detail, target, queued_at, started_at, ended_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (user_name, job_id) DO UPDATE SET
    target     = CASE WHEN j.target = '' THEN EXCLUDED.target ELSE j.target END,
    queued_at  = LEAST(j.queued_at, EXCLUDED.queued_at),
    started_at = LEAST(j.started_at, EXCLUDED.started_at),
    node       = CASE WHEN EXCLUDED.state_seq > j.state_seq THEN EXCLUDED.node ELSE j.node END,
    state      = CASE WHEN EXCLUDED.state_seq > j.state_seq THEN EXCLUDED.state ELSE j.state END,
    ended_at   = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.ended_at ELSE j.ended_at END,
    exit_code  = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.exit_code ELSE j.exit_code END,
    signal     = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.signal ELSE j.signal END,
    detail     = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.detail ELSE j.detail END,
    updated_at = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.updated_at ELSE j.updated_at END,
    state_seq  = GREATEST(j.state_seq, EXCLUDED.state_seq)"""

UPSERT_NODE = """
INSERT INTO nodes (user_name, name, platform, version, tags, last_seen, running, queued, online,
                   cpu_percent, mem_used, mem_total, load1, uptime, temperature)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, $9, $10, $11, $12, $13, $14)
ON CONFLICT (user_name, name) DO UPDATE SET
    platform = EXCLUDED.platform, version = EXCLUDED.version, tags = EXCLUDED.tags,
    last_seen = EXCLUDED.last_seen, running = EXCLUDED.running, queued = EXCLUDED.queued,
    online = true, cpu_percent = EXCLUDED.cpu_percent, mem_used = EXCLUDED.mem_used,
    mem_total = EXCLUDED.mem_total, load1 = EXCLUDED.load1, uptime = EXCLUDED.uptime,
    temperature = EXCLUDED.temperature"""

LOCK_NODE = "SELECT last_seen FROM nodes WHERE user_name = $1 AND name = $2 FOR UPDATE"

MARK_LOST = """
WITH lost AS (
    UPDATE jobs SET state = 'lost', ended_at = $3, updated_at = $3,
                    exit_code = NULL, signal = NULL, detail = $4
    WHERE user_name = $1 AND node = $2 AND state = 'running'
    RETURNING job_id, state_seq
), noted AS (
    INSERT INTO job_states (user_name, job_id, seq, reported_by, state, at, node, detail)
    SELECT $1, job_id, state_seq, 'server', 'lost', $3, $2, $4 FROM lost
    ON CONFLICT DO NOTHING
)
SELECT job_id FROM lost ORDER BY job_id"""

NODE_OFFLINE = "UPDATE nodes SET online = false WHERE user_name = $1 AND name = $2"

UPSERT_LOG = """
INSERT INTO job_logs (user_name, job_id, log_key, log_hash) VALUES ($1, $2, $3, $4)
ON CONFLICT (user_name, job_id) DO UPDATE SET
    log_key = EXCLUDED.log_key, log_hash = EXCLUDED.log_hash, updated_at = now()"""

STALE_NODES = """
SELECT user_name, name FROM nodes WHERE online AND last_seen < $1 ORDER BY user_name, name"""

SELECT_JOBS = """
SELECT j.user_name AS "user", j.job_id, j.node, j.target, j.state, j.state_seq, j.queued_at,
       j.started_at, j.ended_at, j.exit_code, j.signal, j.detail, l.log_key, l.log_hash,
       j.updated_at
FROM jobs AS j
LEFT JOIN job_logs AS l ON l.user_name = j.user_name AND l.job_id = j.job_id"""

NEWEST_FIRST = "ORDER BY j.updated_at DESC, j.job_id DESC"

# At one seq the node's report comes before the server's `lost` ('node' < 'server').
HISTORY = """
SELECT seq, state, at, node, exit_code, signal, detail FROM job_states
WHERE user_name = $1 AND job_id = $2 ORDER BY seq, reported_by"""

NODES = """
SELECT name, platform, version, tags, last_seen, running, queued, online,
       cpu_percent, mem_used, mem_total, load1, uptime, temperature
FROM nodes WHERE user_name = $1 ORDER BY name"""

ADD_USER = "INSERT INTO users (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true"

REMOVE_USER = "DELETE FROM users WHERE name = $1 RETURNING true"

USERS = "SELECT name, created_at FROM users ORDER BY name"

JOBS_BY_STATE = "SELECT state, count(*) AS n FROM jobs GROUP BY state"
