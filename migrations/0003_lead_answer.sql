-- The answer the publisher got, as sent: what every repeat of the lead hears again, even
-- after a settlement changes the lead's status. Saved with the lead, so keeping it costs
-- no Redis write. json, not jsonb: the text is kept as it was, key order included. Leads
-- saved before this column have none: their answer is rebuilt from status, reason and
-- payout.
ALTER TABLE leads ADD COLUMN answer json;
