# Multi-stage build of the `balancer` binary. Build context: the workspace root.
#   docker build -t balancer:dev .
# CI builds this file's build stage without a Docker engine (.ci/docker-build).
FROM rust:1.95-slim-bookworm AS build
# The allocator (tikv-jemallocator) builds jemalloc from C source with cc and make; the slim
# image has gcc but not make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Build only the binary; the other workspace members are compiled only as far as it needs.
RUN cargo build --release --locked -p balancer-tokio --bin balancer \
    && cp target/release/balancer /usr/local/bin/balancer

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/balancer /usr/local/bin/balancer
# A default config (demo backends by compose service name); mount your own over it.
COPY config/compose.toml /etc/balancer/balancer.toml
# The same binary serves as balancer and as demo backend; neither needs root.
USER nobody
# 8080: traffic; 9901: admin API (publish it on loopback or a private network only).
EXPOSE 8080 9901
ENTRYPOINT ["balancer"]
CMD ["--config", "/etc/balancer/balancer.toml"]
