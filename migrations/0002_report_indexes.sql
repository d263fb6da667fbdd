-- Reports read posts by time: a post is made within a lead's deadline of its arrival, so a
-- range of arrivals is a range of post times, which this index serves on any table size.
CREATE INDEX posts_created ON posts (created_at);
