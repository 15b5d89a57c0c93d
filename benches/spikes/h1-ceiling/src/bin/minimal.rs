//! Spike: a hand-written HTTP/1 proxy, one task per client connection (see README.md).

use std::io::Write;

use bytes::BytesMut;
use h1_ceiling::{Shared, backends, copy_headers, dispatch, done, head_end, read_response, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    run(async {
        let shared = backends();
        let listener = TcpListener::bind(h1_ceiling::LISTEN).await.expect("bind");
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                let _ = serve(stream, peer, shared).await;
            });
        }
    });
}

async fn serve(
    mut client: TcpStream,
    peer: std::net::SocketAddr,
    shared: Shared,
) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut response = BytesMut::with_capacity(8192);
    loop {
        let end = loop {
            if let Some(end) = head_end(&input) {
                break end;
            }
            if client.read_buf(&mut input).await? == 0 {
                return Ok(());
            }
        };
        let mut dispatched = dispatch(&shared).await?;
        {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            request
                .parse(&input[..end])
                .map_err(std::io::Error::other)?;
            out.clear();
            let _ = write!(
                out,
                "{} {} HTTP/1.1\r\n",
                request.method.unwrap_or("GET"),
                request.path.unwrap_or("/")
            );
            copy_headers(&mut out, request.headers.iter().map(|h| (h.name, h.value)));
        }
        let _ = write!(
            out,
            "x-forwarded-for: {}\r\nx-forwarded-proto: http\r\nvia: 1.1 spike\r\nx-request-id: {:016x}\r\n\r\n",
            peer.ip(),
            dispatched.id
        );
        let _ = input.split_to(end);
        dispatched.connection.write_all(&out).await?;
        let (end, length) = read_response(&mut dispatched.connection, &mut response).await?;
        out.clear();
        {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            parsed
                .parse(&response[..end])
                .map_err(std::io::Error::other)?;
            let _ = write!(
                out,
                "HTTP/1.1 {} {}\r\n",
                parsed.code.unwrap_or(502),
                parsed.reason.unwrap_or("")
            );
            copy_headers(&mut out, parsed.headers.iter().map(|h| (h.name, h.value)));
        }
        let _ = write!(
            out,
            "via: 1.1 spike\r\nx-request-id: {:016x}\r\n\r\n",
            dispatched.id
        );
        out.extend_from_slice(&response[end..end + length]);
        done(&shared, dispatched);
        client.write_all(&out).await?;
    }
}
