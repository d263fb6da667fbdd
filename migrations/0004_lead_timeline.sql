-- When each phase of a lead ended, in ms from its arrival: claimed (Redis claim and the
-- Postgres backstop read done), pings_sent, pinged (the ping phase over), posted (the
-- last post answered). Operators read it in the lead's story to see where a slow answer's
-- time went; leads saved before this column, or that never reached a phase, lack it.
ALTER TABLE leads ADD COLUMN timeline jsonb;
