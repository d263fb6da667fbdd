-- Every lead's save writes ~10 ping rows and a post row in the same statement as the lead
-- (exchange/store/leads.py), so their foreign keys to leads never caught anything, and
-- each ran a trigger query per row; nothing reads the index on (buyer_id, created_at):
-- reports reach pings by lead_id. Dropped together: Postgres CPU a lead 1.61 -> 1.43 ms in
-- the bench (loadtests/README, twelfth session). Sales and ledger rows, the money, keep
-- their foreign keys; nothing deletes leads, so no cascade is lost.
-- Each statement takes an exclusive lock on its table: give up rather than queue every
-- save behind a long report (the migration is retried at the next start or migrate).
SET LOCAL lock_timeout = '5s';
DROP INDEX IF EXISTS pings_buyer_time;
ALTER TABLE pings DROP CONSTRAINT IF EXISTS pings_lead_id_fkey;
ALTER TABLE posts DROP CONSTRAINT IF EXISTS posts_lead_id_fkey;
