-- An author with more followers than the configured threshold is a
-- celebrity: their posts are not copied into every follower's cached feed
-- but kept once per author and merged in when a feed is read. The feed
-- worker flips this flag when a follow or unfollow crosses the threshold.
ALTER TABLE users ADD COLUMN celebrity boolean NOT NULL DEFAULT false;
