# Multi-stage build: a slim runtime image running as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin cdc-enricher

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/cdc-enricher --create-home cdc
COPY --from=build /src/target/release/cdc-enricher /usr/local/bin/cdc-enricher
COPY cdc-enricher.yaml /etc/cdc-enricher/cdc-enricher.yaml
COPY pipelines /etc/cdc-enricher/pipelines
USER cdc
WORKDIR /var/lib/cdc-enricher
ENV CHECKPOINT_PATH=/var/lib/cdc-enricher/checkpoint.json
ENTRYPOINT ["cdc-enricher"]
CMD ["run", "-c", "/etc/cdc-enricher/cdc-enricher.yaml"]
