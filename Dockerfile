# Multi-stage build of the `balancer` binary. Build context: the workspace root.
#   docker build -t balancer:dev .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Build only the binary; the other workspace members are compiled only as far as it needs.
RUN cargo build --release --locked -p balancer-tokio --bin balancer \
    && cp target/release/balancer /usr/local/bin/balancer

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/balancer /usr/local/bin/balancer
# The same binary serves as balancer and as demo backend; neither needs root.
USER nobody
# 8080: traffic; 9901: admin API (publish it on loopback or a private network only).
EXPOSE 8080 9901
ENTRYPOINT ["balancer"]
CMD ["--config", "/etc/balancer/balancer.toml"]
