-- The lead, every ping, post and sale, and a double-entry ledger. Money in integer cents.

CREATE TABLE leads (
    lead_id          uuid PRIMARY KEY,
    publisher_id     text        NOT NULL,
    external_id      text,
    idempotency_key  text,
    vertical         text        NOT NULL,
    test             boolean     NOT NULL DEFAULT false,
    status           text        NOT NULL CHECK (status IN ('sold','unsold','duplicate','rejected','pending')),
    reason           text,
    payout_cents     bigint      NOT NULL DEFAULT 0,
    received_at      timestamptz NOT NULL,
    answered_at      timestamptz NOT NULL DEFAULT now(),
    duration_ms      integer,
    phone            text,
    email            text,
    state            text,
    zip              text,
    sub_id           text,
    contact          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    profile          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    consent          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source           jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE UNIQUE INDEX leads_publisher_external ON leads (publisher_id, external_id) WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX leads_publisher_idem ON leads (publisher_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX leads_received ON leads (received_at);
CREATE INDEX leads_vertical_phone ON leads (vertical, phone, received_at);
CREATE INDEX leads_vertical_email ON leads (vertical, email, received_at);

-- One row per campaign considered for a lead: pinged or not, with the reason.
CREATE TABLE pings (
    ping_id      uuid        PRIMARY KEY,
    lead_id      uuid        NOT NULL REFERENCES leads (lead_id) ON DELETE CASCADE,
    buyer_id     text        NOT NULL,
    campaign_id  text        NOT NULL,
    outcome      text        NOT NULL,   -- what the ping did: bid, no_bid, timeout, error, or why not pinged
    reason       text        NOT NULL,   -- the campaign's end: sold, outbid, post_rejected, ... (named reasons)
    detail       text,                   -- free text for operators, e.g. 'HTTP 500'
    price_cents  bigint,
    bid_id       text,
    latency_ms   integer,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pings_lead ON pings (lead_id);
CREATE INDEX pings_buyer_time ON pings (buyer_id, created_at);

CREATE TABLE posts (
    post_id        bigserial   PRIMARY KEY,
    lead_id        uuid        NOT NULL REFERENCES leads (lead_id) ON DELETE CASCADE,
    buyer_id       text        NOT NULL,
    campaign_id    text        NOT NULL,
    price_cents    bigint      NOT NULL,
    state          text        NOT NULL CHECK (state IN ('accepted','rejected','failed','unknown')),
    accepted       boolean,
    reason         text,
    buyer_lead_id  text,
    latency_ms     integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    settled_at     timestamptz,
    settled_by     text,
    reservation    jsonb       -- the cap keys held by an unknown post, released if it settles as rejected
);
CREATE INDEX posts_lead ON posts (lead_id);
CREATE INDEX posts_unknown ON posts (created_at) WHERE state = 'unknown';

CREATE TABLE sales (
    sale_id       bigserial   PRIMARY KEY,
    lead_id       uuid        NOT NULL REFERENCES leads (lead_id) ON DELETE CASCADE,
    publisher_id  text        NOT NULL,
    vertical      text        NOT NULL,
    buyer_id      text        NOT NULL,
    campaign_id   text        NOT NULL,
    price_cents   bigint      NOT NULL CHECK (price_cents >= 0),
    payout_cents  bigint      NOT NULL CHECK (payout_cents >= 0),
    test          boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (lead_id, buyer_id)
);
CREATE INDEX sales_time ON sales (created_at);
CREATE INDEX sales_campaign_time ON sales (campaign_id, created_at);
-- An exclusive lead is sold once at all: the writer marks such sales, the index enforces it.
ALTER TABLE sales ADD COLUMN exclusive boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX sales_one_exclusive ON sales (lead_id) WHERE exclusive;

-- Double entry: each sale's rows sum to zero. A return adds reversing rows, never an UPDATE.
CREATE TABLE ledger (
    entry_id     bigserial   PRIMARY KEY,
    sale_id      bigint      NOT NULL REFERENCES sales (sale_id) ON DELETE CASCADE,
    lead_id      uuid        NOT NULL,
    account      text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('buyer_charge','publisher_payout','exchange_margin','reversal')),
    amount_cents bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_sale ON ledger (sale_id);
CREATE INDEX ledger_account_time ON ledger (account, created_at);

-- Operator actions on campaigns (pause/resume) survive restarts and reach every worker.
CREATE TABLE campaign_state (
    campaign_id  text        PRIMARY KEY,
    paused       boolean     NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    changed_by   text
);
