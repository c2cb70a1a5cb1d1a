-- A node's vitals, as its last heartbeat gave them (NULL where the node could not read one,
-- or runs a runlet older than the vitals): CPU busy %, memory used and total in bytes, the
-- 1-minute load average, seconds since boot, and its hottest thermal sensor in Celsius.

ALTER TABLE nodes
    ADD COLUMN cpu_percent  real,
    ADD COLUMN mem_used     bigint,
    ADD COLUMN mem_total    bigint,
    ADD COLUMN load1        real,
    ADD COLUMN uptime       double precision,
    ADD COLUMN temperature  real;
