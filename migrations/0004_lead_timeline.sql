-- When each phase of a lead ended, in ms from its arrival: claimed (its ids claimed in
-- Redis and looked up in Postgres; at once for a lead without ids), pings_sent and pinged
-- (the ping phase, only when it pinged), posted (the last post answered, when it posted).
-- Operators read it in the lead's story to see where a slow answer's time went; leads
-- saved before this column lack it (null).
ALTER TABLE leads ADD COLUMN timeline jsonb;
