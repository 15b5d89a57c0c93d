//! What both spikes share: least-pending over fixed backends, per-thread keep-alive lists, and
//! reading a `Content-Length` response from a backend. Single-threaded (`Rc<RefCell<_>>`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// jemalloc, as the balancer's binary uses.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The proxy's address and its backends' (the load harness's layout).
pub const LISTEN: &str = "127.0.0.1:19100";
pub const BACKEND_PORTS: std::ops::RangeInclusive<u16> = 19001..=19004;

/// Backends, their pending counts and idle connections.
pub struct Backends {
    addresses: Vec<SocketAddr>,
    pending: Vec<u32>,
    idle: Vec<Vec<TcpStream>>,
    next_id: u64,
}

pub type Shared = Rc<RefCell<Backends>>;

/// The harness's four backends.
pub fn backends() -> Shared {
    let addresses: Vec<SocketAddr> = BACKEND_PORTS
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    let n = addresses.len();
    Rc::new(RefCell::new(Backends {
        addresses,
        pending: vec![0; n],
        idle: (0..n).map(|_| Vec::new()).collect(),
        next_id: 0,
    }))
}

/// A dispatched request: its backend and a connection to it.
pub struct Dispatched {
    pub backend: usize,
    pub id: u64,
    pub connection: TcpStream,
}

/// Least pending, then an idle connection to it or a new one.
pub async fn dispatch(shared: &Shared) -> std::io::Result<Dispatched> {
    let (backend, address, id, pooled) = {
        let mut s = shared.borrow_mut();
        let backend = (0..s.pending.len())
            .min_by_key(|&i| s.pending[i])
            .unwrap_or(0);
        s.pending[backend] += 1;
        s.next_id += 1;
        let pooled = s.idle[backend].pop();
        (backend, s.addresses[backend], s.next_id, pooled)
    };
    let connection = match pooled {
        Some(connection) => connection,
        None => {
            let connection = TcpStream::connect(address).await?;
            connection.set_nodelay(true)?;
            connection
        }
    };
    Ok(Dispatched {
        backend,
        id,
        connection,
    })
}

/// The request is done: its connection goes back to the idle list.
pub fn done(shared: &Shared, dispatched: Dispatched) {
    let mut s = shared.borrow_mut();
    s.pending[dispatched.backend] -= 1;
    s.idle[dispatched.backend].push(dispatched.connection);
}

/// Where a head ends (after its blank line), if it is complete.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Reads a whole response (head and `Content-Length` body) into `buffer`; returns where the
/// head ends and the body's length.
pub async fn read_response(
    connection: &mut TcpStream,
    buffer: &mut BytesMut,
) -> std::io::Result<(usize, usize)> {
    buffer.clear();
    let (end, length) = loop {
        if let Some(end) = head_end(buffer) {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            response
                .parse(&buffer[..end])
                .map_err(std::io::Error::other)?;
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            break (end, length);
        }
        if connection.read_buf(buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    while buffer.len() < end + length {
        if connection.read_buf(buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok((end, length))
}

/// Appends `name: value\r\n` for every header but `Connection`.
pub fn copy_headers<'a>(out: &mut Vec<u8>, headers: impl Iterator<Item = (&'a str, &'a [u8])>) {
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// A current-thread runtime with a `LocalSet`, as the balancer's workers run.
pub fn run(main: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, main);
}
