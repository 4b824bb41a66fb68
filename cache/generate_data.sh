#!/usr/bin/env bash
# cache/generate_data.sh: builds the Redis feeds from PostgreSQL by running
# `livefeed warm-cache` (every argument is passed through to it). Safe while
# the service serves traffic: it uses the same build protocol as a read.
#
# With the compose stack up (`docker compose up -d`) it fills the stack's
# Redis from the stack's PostgreSQL, running inside the stack (needs only
# Docker); otherwise the services of this machine. See scripts/run-livefeed.
#
#   cache/generate_data.sh                   # every user's feed
#   cache/generate_data.sh --users 100000    # the 100,000 users who follow the most others
#
# Flag                   Environment variable            Default
# --database-url         DATABASE_URL                    postgres://postgres@localhost:5432/livefeed
# --redis-url            REDIS_URL                       redis://127.0.0.1:6379
# --redis-prefix         LIVEFEED_REDIS_PREFIX           lf:  (must match the service's)
# --celebrity-threshold  LIVEFEED_CELEBRITY_THRESHOLD    10000 (must match the service's)
# --users                LIVEFEED_WARM_USERS             all
# --concurrency          LIVEFEED_WARM_CONCURRENCY       4 chunks of 500 feeds built at once
#
# Progress (feeds, rate, time left) goes to stderr; the exit status is non-zero if any feed failed.
# The default data set (1,000,000 users, ~253M feed ids) took 6 min 31 s on 2 cores and
# 4.8 GiB of Redis (BENCHMARKS.md §20).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/run-livefeed" warm-cache "$@"
