-- Every lead's save writes ~10 ping rows and a post row in the same statement as the lead
-- (exchange/store/leads.py): their foreign keys to leads never caught anything, and ran a
-- trigger query per row. Dropped with the one index nothing reads (reports reach pings by
-- lead_id): ~20% less Postgres CPU a save (loadtests/README, twelfth session). Sales and
-- ledger rows, the money, keep their foreign keys; nothing deletes leads (no cascade lost).
DROP INDEX IF EXISTS pings_buyer_time;
ALTER TABLE pings DROP CONSTRAINT IF EXISTS pings_lead_id_fkey;
ALTER TABLE posts DROP CONSTRAINT IF EXISTS posts_lead_id_fkey;
