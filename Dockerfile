# Multi-stage build: compile junction (bundled RocksDB and librdkafka), then
# copy the binary into a slim runtime image.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --bin junction

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libstdc++6 curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/junction junction \
    && mkdir -p /var/lib/junction && chown junction /var/lib/junction
COPY --from=build /src/target/release/junction /usr/local/bin/junction
COPY config/junction.toml /etc/junction/junction.toml
USER junction
ENV JUNCTION_STATE_DIR=/var/lib/junction JUNCTION_HTTP_LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["junction"]
CMD ["run", "--config", "/etc/junction/junction.toml"]
