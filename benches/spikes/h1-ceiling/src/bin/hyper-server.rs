//! Spike: hyper's HTTP/1 server for clients, the backend exchange by hand (see README.md).

use std::io::Write;

use bytes::{Bytes, BytesMut};
use h1_ceiling::{Shared, backends, copy_headers, dispatch, done, read_response, run};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn main() {
    run(async {
        let shared = backends();
        let listener = TcpListener::bind(h1_ceiling::LISTEN).await.expect("bind");
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10))
            .keep_alive(true);
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let connection = builder.serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(move |request| exchange(request, peer, shared.clone())),
            );
            tokio::task::spawn_local(async move {
                let _ = connection.await;
            });
        }
    });
}

async fn exchange(
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
    shared: Shared,
) -> std::io::Result<Response<Full<Bytes>>> {
    let mut dispatched = dispatch(&shared).await?;
    let mut out = Vec::with_capacity(1024);
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let _ = write!(out, "{} {target} HTTP/1.1\r\n", request.method());
    copy_headers(
        &mut out,
        request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let _ = write!(
        out,
        "x-forwarded-for: {}\r\nx-forwarded-proto: http\r\nvia: 1.1 spike\r\nx-request-id: {:016x}\r\n\r\n",
        peer.ip(),
        dispatched.id
    );
    dispatched.connection.write_all(&out).await?;
    let mut buffer = BytesMut::with_capacity(8192);
    let (end, length) = read_response(&mut dispatched.connection, &mut buffer).await?;
    let mut builder = Response::builder();
    {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        parsed
            .parse(&buffer[..end])
            .map_err(std::io::Error::other)?;
        builder = builder.status(parsed.code.unwrap_or(502));
        for h in parsed
            .headers
            .iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("connection"))
        {
            builder = builder.header(h.name, h.value);
        }
    }
    let id = dispatched.id;
    done(&shared, dispatched);
    let body = buffer.freeze().slice(end..end + length);
    builder
        .header("via", "1.1 spike")
        .header("x-request-id", format!("{id:016x}"))
        .body(Full::new(body))
        .map_err(std::io::Error::other)
}
