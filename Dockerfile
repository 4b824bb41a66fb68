# syntax=docker/dockerfile:1
#
# Image of the livefeed server:  docker build -t livefeed .
# Runs `livefeed serve`, which applies the database migrations at start.

# ---- manifests: only the Cargo.toml / Cargo.lock files of the workspace ------
# Taking them from the whole context keeps this working for any workspace
# member (e.g. a later loadtest/) without naming it here. The output changes
# only when a manifest changes, so the dependency layer below stays cached.
FROM rust:1.95.0-bookworm AS manifests
WORKDIR /src
COPY . .
RUN mkdir /manifests \
 && find . -path ./target -prune -o \( -name Cargo.toml -o -name Cargo.lock \) -print0 \
      | xargs -0 cp --parents -p -t /manifests

# ---- builder -----------------------------------------------------------------
FROM rust:1.95.0-bookworm AS builder
WORKDIR /app

# 1. Dependencies only, against dummy sources for every workspace member.
#    (No literal "{}" in the -execdir command: find would substitute it.)
COPY --from=manifests /manifests/ ./
RUN find . -name Cargo.toml -execdir sh -c \
      'mkdir -p src && echo "fn main() { }" > src/main.rs && touch src/lib.rs' \; \
 && cargo build --release --locked --bin livefeed \
 && rm -rf src

# 2. The real crate: sources, the migrations that refinery's
#    embed_migrations! compiles in, and build.rs, which names the commit in
#    the build-info metric (no .git in the context: pass
#    --build-arg LIVEFEED_GIT_COMMIT=$(git rev-parse --short=12 HEAD)).
#    Other members keep their dummy sources.
ARG LIVEFEED_GIT_COMMIT=unknown
COPY build.rs ./
COPY src ./src
COPY db ./db
RUN cargo clean --release --locked -p livefeed \
 && cargo build --release --locked --bin livefeed

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 livefeed \
 && useradd --system --uid 10001 --gid livefeed --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin livefeed
COPY --from=builder /app/target/release/livefeed /usr/local/bin/livefeed
USER 10001:10001
ENV LIVEFEED_LISTEN=0.0.0.0:8080
EXPOSE 8080
# No HEALTHCHECK here: the slim image has no HTTP client; docker-compose.yml
# probes /readyz with bash instead.
ENTRYPOINT ["livefeed"]
CMD ["serve"]
