-- 0016: queues can be paused. Workers claim nothing from a paused queue (the claim statement
-- reads this table, so a pause holds from the next claim on, on every worker, with no message
-- to miss); jobs already running finish. Resuming wakes the queue's workers at once.
-- docs/schema.md documents the table and the functions.

CREATE TABLE skiplock.queues (
    name         text        PRIMARY KEY,
    -- Set while the queue is paused, with who paused it (the session's role) and why.
    paused_at    timestamptz,
    paused_by    text,
    pause_reason text,
    CONSTRAINT queues_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    CONSTRAINT queues_reason_length CHECK (char_length(pause_reason) <= 1000),
    CONSTRAINT queues_paused_fields CHECK (paused_at IS NOT NULL
                                           OR (paused_by IS NULL AND pause_reason IS NULL))
);

COMMENT ON TABLE skiplock.queues IS
    'Per-queue control: a queue with paused_at set is not claimed from. A queue without a row runs.';

-- Pauses `queue` (whether or not it has jobs yet); true when this call paused it, false when
-- it was paused already (its pause time, role and reason are kept).
CREATE FUNCTION skiplock.pause_queue(queue text, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO skiplock.queues (name) VALUES (queue) ON CONFLICT (name) DO NOTHING;
    UPDATE skiplock.queues AS q
    SET paused_at = now(), paused_by = session_user, pause_reason = reason
    WHERE q.name = queue AND q.paused_at IS NULL;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION skiplock.pause_queue(text, text) IS
    'Pauses a queue: workers claim none of its jobs until skiplock.resume_queue(). True when this call paused it.';

-- Resumes `queue`; true when it was paused. Its workers are woken at commit.
CREATE FUNCTION skiplock.resume_queue(queue text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE skiplock.queues AS q
    SET paused_at = NULL, paused_by = NULL, pause_reason = NULL
    WHERE q.name = queue AND q.paused_at IS NOT NULL;
    IF FOUND THEN
        PERFORM pg_notify('skiplock_wake', queue);
        RETURN true;
    END IF;
    RETURN false;
END
$$;

COMMENT ON FUNCTION skiplock.resume_queue(text) IS
    'Resumes a paused queue and wakes its workers (at commit). True when it was paused.';

-- Operators and workers call these (the worker level gets every function); nobody else.
REVOKE EXECUTE ON FUNCTION skiplock.pause_queue(text, text), skiplock.resume_queue(text) FROM PUBLIC;
