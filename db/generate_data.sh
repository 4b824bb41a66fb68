#!/usr/bin/env bash
# db/generate_data.sh: fills PostgreSQL with the load-test data set by running
# `livefeed seed` (every argument is passed through to it).
#
# With the compose stack up (`docker compose up -d`) it fills the stack's
# PostgreSQL, running inside the stack (needs only Docker); otherwise the
# PostgreSQL of this machine. See scripts/run-livefeed.
#
#   db/generate_data.sh                          # 1,000,000 users, ~32M follows, 1,000,000 posts
#   db/generate_data.sh --users 10000 --posts 20000
#   LIVEFEED_SEED_USERS=100000 db/generate_data.sh --replace
#
# The database (the stack's, else DATABASE_URL or --database-url, default
# postgres://postgres@localhost:5432/livefeed) is created and migrated first.
# A database that already has users is refused unless --replace is given,
# which first deletes every user, follow, post, dialog message and outbox event.
#
# Every seeded user's password is "livefeed-seed" (--password or
# LIVEFEED_SEED_PASSWORD to change it; at least 8 characters), e.g.
#   curl -s localhost:8080/login -d '{"id":"<a user id>","password":"livefeed-seed"}'
# The summary at the end names a user to log in as and the most followed users.
#
# Flag                   Environment variable           Default
# --database-url         DATABASE_URL                   postgres://postgres@localhost:5432/livefeed
# --users                LIVEFEED_SEED_USERS            1000000
# --posts                LIVEFEED_SEED_POSTS            1000000
# --follows              LIVEFEED_SEED_FOLLOWS          25 (median follows per user; mean ~32)
# --seed                 LIVEFEED_SEED                  42 (same seed and sizes: same data)
# --password             LIVEFEED_SEED_PASSWORD         livefeed-seed
# --celebrity-threshold  LIVEFEED_CELEBRITY_THRESHOLD   10000 (more followers: celebrity = true)
# --until                LIVEFEED_SEED_UNTIL            2026-11-01 (posts dated over the year before)
# --replace              LIVEFEED_SEED_REPLACE          off
#
# Outside the stack the binary is picked by scripts/run-livefeed ($LIVEFEED_BIN,
# else target/release/livefeed, else `cargo run --release`). Progress lines
# (rows, rate, time left) go to stderr. The default size takes a few minutes
# on 2 cores and about 6 GB of disk (tables, indexes and WAL).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/run-livefeed" seed "$@"
