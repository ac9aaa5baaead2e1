-- One row per cron tick handled, so operators (and the multi-scheduler test)
-- can see that each tick ran exactly once across all scheduler processes.
CREATE TABLE scheduler_ticks (
    schedule TEXT NOT NULL,
    tick_ms  BIGINT NOT NULL,
    runs     BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    PRIMARY KEY (schedule, tick_ms)
);
