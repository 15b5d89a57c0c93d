//! The vectors, one struct each: request framing, header syntax, request lines, Host,
//! hop-by-hop headers, Expect, upgrades and protocol switches, pipelining, and responses from
//! misbehaving backends. Written from RFC 9110/9112 and published request-smuggling research
//! (CL.TE, TE.CL, TE.TE obfuscations, response queue poisoning).
//!
//! `why` says where and why the balancer differs from both references; the suite fails if it
//! does without one.

use crate::recorder::Reply;
use crate::{Answer, Check, OK, Pad, Upstream, Vector};
use Answer::{Cut, Status, Statuses};
use Check::*;
use Upstream::{Nothing, Requests};

/// Bytes of the string literals joined.
macro_rules! s {
    ($($part:expr),* $(,)?) => { concat!($($part),*).as_bytes() };
}

/// A head for `POST /` with `Host: t` and these header lines (each ending in CRLF), then an
/// empty line, then the body.
macro_rules! post {
    ($headers:expr, $body:expr) => {
        s!("POST / HTTP/1.1\r\nHost: t\r\n", $headers, "\r\n", $body)
    };
}

/// A `GET /` with `Host: t` and these header lines.
macro_rules! get {
    ($headers:expr) => {
        s!("GET / HTTP/1.1\r\nHost: t\r\n", $headers, "\r\n")
    };
}

const GET: &[u8] = s!("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
/// A chunked body of `hello`.
macro_rules! hello_chunked {
    () => {
        "5\r\nhello\r\n0\r\n\r\n"
    };
}

/// The defaults every vector starts from: a plain answer, no padding, nothing sent later.
const V: Vector = Vector {
    name: "",
    send: GET,
    pad: Pad::None,
    then: b"",
    until_close: false,
    backend: &[OK],
    answer: Status(200),
    upstream: Requests(1),
    checks: &[],
    why: "",
};

/// A refused request: 400, and not a byte at the backend.
const REFUSED: Vector = Vector {
    answer: Status(400),
    upstream: Nothing,
    ..V
};

/// A backend reply that keeps the connection.
const fn keep(bytes: &'static [u8]) -> Reply {
    Reply {
        bytes,
        close: false,
    }
}

/// A backend reply after which it closes.
const fn close(bytes: &'static [u8]) -> Reply {
    Reply { bytes, close: true }
}

const SWITCH: Reply = keep(s!(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
));

/// The headers of a WebSocket handshake.
macro_rules! websocket {
    () => {
        concat!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
    };
}

/// Framing of request bodies: Content-Length, chunked, and the ways to get them wrong.
const FRAMING: &[Vector] = &[
    Vector {
        name: "get",
        checks: &[Target(0, "/"), Body(0, "")],
        ..V
    },
    Vector {
        name: "content_length_body",
        send: post!("Content-Length: 5\r\n", "hello"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "content_length_zero",
        send: post!("Content-Length: 0\r\n", ""),
        checks: &[Body(0, "")],
        ..V
    },
    Vector {
        name: "content_length_on_get",
        send: s!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "content_length_leading_zeros",
        // 1*DIGIT: leading zeros are valid.
        send: post!("Content-Length: 005\r\n", "hello"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "content_length_many_leading_zeros",
        send: post!("Content-Length: 00000000000000000000005\r\n", "hello"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "content_length_ows",
        send: post!("Content-Length:   5  \r\n", "hello"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "content_length_tab",
        send: post!("Content-Length:\t5\r\n", "hello"),
        checks: &[Body(0, "hello")],
        why: "HTAB is OWS (RFC 9110 §5.6.3), as HAProxy reads it; nginx refuses it",
        ..V
    },
    Vector {
        name: "content_length_plus_sign",
        send: post!("Content-Length: +5\r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "content_length_minus_sign",
        send: post!("Content-Length: -5\r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "content_length_hex",
        send: post!("Content-Length: 0x5\r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "content_length_decimal_point",
        send: post!("Content-Length: 5.0\r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "content_length_space_inside",
        send: post!("Content-Length: 5 5\r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "content_length_empty",
        send: post!("Content-Length: \r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "content_length_duplicate_same",
        // RFC 9112 §6.3: identical values may be taken as one; one reaches the backend.
        send: post!("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        checks: &[Body(0, "hello"), Value(0, "content-length", "5")],
        why: "RFC 9112 §6.3 lets identical values count as one; one reaches the backend, as with HAProxy; nginx refuses",
        ..V
    },
    Vector {
        name: "content_length_duplicate_differ",
        send: post!("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ..REFUSED
    },
    Vector {
        name: "content_length_list_same",
        send: post!("Content-Length: 5, 5\r\n", "hello"),
        answer: Status(400),
        upstream: Nothing,
        why: "hyper refuses a list even of equal values, as nginx does; HAProxy folds it (RFC 9112 §6.3 allows both)",
        ..V
    },
    Vector {
        name: "content_length_list_differ",
        send: post!("Content-Length: 5, 6\r\n", "hello!"),
        ..REFUSED
    },
    Vector {
        name: "content_length_overflow",
        // hyper's reading of a length beyond u64 is the largest there is: over the body limit.
        send: post!("Content-Length: 99999999999999999999999\r\n", "hello"),
        answer: Status(413),
        ..REFUSED
    },
    Vector {
        name: "content_length_over_limit",
        send: post!("Content-Length: 20000000\r\n", "hello"),
        answer: Status(413),
        upstream: Nothing,
        ..V
    },
    Vector {
        name: "content_length_body_short",
        // The client stops before the declared length: the proxy waits, then gives up.
        send: post!("Content-Length: 10\r\n", "hello"),
        answer: Status(408),
        upstream: Requests(0),
        ..V
    },
    Vector {
        name: "content_length_body_longer",
        // The extra bytes are the start of a next request, which is not HTTP.
        send: post!("Content-Length: 3\r\n", "hello"),
        checks: &[Body(0, "hel")],
        ..V
    },
    Vector {
        name: "content_length_space_before_colon",
        send: post!("Content-Length : 5\r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "chunked_body",
        send: post!("Transfer-Encoding: chunked\r\n", hello_chunked!()),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_two_chunks",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_uppercase_hex",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "A\r\n0123456789\r\n0\r\n\r\n"
        ),
        checks: &[Body(0, "0123456789")],
        ..V
    },
    Vector {
        name: "chunked_size_leading_zeros",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "0005\r\nhello\r\n000\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_extension",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5;a=b\r\nhello\r\n0;c\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_extension_quoted",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5;a=\"x;y\"\r\nhello\r\n0\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_extension_bws",
        // RFC 9112 §7.1.1: BWS before the `;` of an extension.
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5 ;a=b\r\nhello\r\n0\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_trailer",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_size_overflow",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"
        ),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunked_size_2_pow_64",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "10000000000000000\r\nhello\r\n0\r\n\r\n"
        ),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunked_size_over_limit",
        // Streamed: the limit is met only when the bytes arrive, and they stop first.
        send: post!("Transfer-Encoding: chunked\r\n", "FFFFFFFF\r\nhello"),
        upstream: Requests(0),
        answer: Status(408),
        ..V
    },
    Vector {
        name: "chunked_size_negative",
        send: post!("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunked_size_0x",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "0x5\r\nhello\r\n0\r\n\r\n"
        ),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunked_size_empty",
        send: post!("Transfer-Encoding: chunked\r\n", "\r\nhello\r\n0\r\n\r\n"),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunked_data_overrun",
        send: post!("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunked_bare_lf",
        send: post!("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"),
        upstream: Requests(0),
        why: "stricter on purpose: a bare LF in chunk framing is a known desync between parsers (hyper refuses it); both references accept it",
        ..REFUSED
    },
    Vector {
        name: "chunk_extension_bare_lf",
        // "Funky chunks": a bare LF inside an extension ends the line for some parsers only.
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5;a\nxx\r\nhello\r\n0\r\n\r\n"
        ),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunk_extension_bare_cr",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5;a\rxx\r\nhello\r\n0\r\n\r\n"
        ),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunk_data_bare_lf_terminator",
        send: post!("Transfer-Encoding: chunked\r\n", "5\r\nhello\n0\r\n\r\n"),
        upstream: Requests(0),
        why: "stricter on purpose: the CRLF after chunk data is part of the framing (RFC 9112 §7.1), and a parser that takes a bare LF there reads the next chunk where another reads data; both references accept it",
        ..REFUSED
    },
    Vector {
        name: "chunk_data_no_terminator",
        // The two bytes after the data must be CRLF; some parsers skip any two bytes.
        send: post!("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"),
        upstream: Requests(0),
        ..REFUSED
    },
    Vector {
        name: "chunk_size_space_no_extension",
        send: post!("Transfer-Encoding: chunked\r\n", "5 \r\nhello\r\n0\r\n\r\n"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunk_size_many_zeros",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "000000000000000000000005\r\nhello\r\n0\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_trailer_content_length",
        // A framing field in the trailer section must not frame anything (RFC 9110 §6.5.1).
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_last_chunk_extension",
        send: post!(
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0;end=1\r\n\r\n"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_smuggled_after_last_chunk",
        // The bytes after the last chunk are the next request, and are framed as one.
        send: s!(
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /next HTTP/1.1\r\nHost: t\r\n\r\n"
        ),
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[Body(0, ""), Target(1, "/next")],
        ..V
    },
    Vector {
        name: "te_trailing_space",
        send: post!("Transfer-Encoding: chunked \r\n", hello_chunked!()),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "te_lowercase_name",
        send: post!("transfer-encoding: chunked\r\n", hello_chunked!()),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "te_on_get",
        // A GET may carry content (RFC 9110 §9.3.1): the chunks reach the backend.
        send: s!(
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            hello_chunked!()
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "te_on_head",
        // A HEAD may carry content (RFC 9110 §9.3.2): the chunks reach the backend.
        send: s!(
            "HEAD / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            hello_chunked!()
        ),
        checks: &[Body(0, "hello")],
        backend: &[keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")],
        ..V
    },
    Vector {
        name: "te_on_delete",
        // A DELETE may carry content (RFC 9110 §9.3.5): the chunks reach the backend.
        send: s!(
            "DELETE / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            hello_chunked!()
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "chunked_no_last_chunk",
        send: post!("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n"),
        answer: Status(408),
        upstream: Requests(0),
        ..V
    },
    Vector {
        name: "chunked_then_pipelined",
        send: s!(
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "GET /two HTTP/1.1\r\nHost: t\r\n\r\n"
        ),
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[Body(0, "hello"), Target(1, "/two")],
        ..V
    },
];

/// Both framing headers, and Transfer-Encoding in disguise (CL.TE, TE.CL, TE.TE).
const SMUGGLING: &[Vector] = &[
    Vector {
        name: "cl_te",
        send: post!(
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nG"
        ),
        answer: Status(200),
        upstream: Requests(1),
        checks: &[
            Body(0, ""),
            Target(0, "/"),
            Lacks(0, "content-length"),
            ClientClosed,
        ],
        why: "RFC 9112 §6.1: forwarded as chunked with Content-Length removed, and the connection closed after the answer (what follows is never read as a request), as HAProxy does; nginx refuses",
        ..REFUSED
    },
    Vector {
        name: "te_cl",
        send: post!(
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "8\r\nSMUGGLED\r\n0\r\n\r\n"
        ),
        answer: Status(200),
        upstream: Requests(1),
        checks: &[
            Body(0, "SMUGGLED"),
            Target(0, "/"),
            Lacks(0, "content-length"),
            ClientClosed,
        ],
        why: "RFC 9112 §6.1: forwarded as chunked with Content-Length removed, and the connection closed after the answer (what follows is never read as a request), as HAProxy does; nginx refuses",
        ..REFUSED
    },
    Vector {
        name: "cl_te_smuggled_request",
        send: post!(
            "Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
        ),
        answer: Status(200),
        upstream: Requests(1),
        checks: &[
            Body(0, ""),
            Target(0, "/"),
            Lacks(0, "content-length"),
            ClientClosed,
        ],
        why: "RFC 9112 §6.1: forwarded as chunked with Content-Length removed, and the connection closed after the answer (what follows is never read as a request), as HAProxy does; nginx refuses",
        ..REFUSED
    },
    Vector {
        name: "cl_zero_te",
        send: post!(
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
            hello_chunked!()
        ),
        answer: Status(200),
        upstream: Requests(1),
        checks: &[
            Body(0, "hello"),
            Target(0, "/"),
            Lacks(0, "content-length"),
            ClientClosed,
        ],
        why: "RFC 9112 §6.1: forwarded as chunked with Content-Length removed, and the connection closed after the answer (what follows is never read as a request), as HAProxy does; nginx refuses",
        ..REFUSED
    },
    Vector {
        name: "te_xchunked",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n",
            "hello"
        ),
        upstream: Nothing,
        answer: Status(400),
        ..V
    },
    Vector {
        name: "te_space_before_colon",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
            "hello"
        ),
        ..REFUSED
    },
    Vector {
        name: "te_tab_before_value",
        send: post!("Transfer-Encoding:\tchunked\r\n", hello_chunked!()),
        checks: &[Body(0, "hello")],
        why: "HTAB is OWS (RFC 9110 §5.6.3), as HAProxy reads it; nginx answers 501",
        ..V
    },
    Vector {
        name: "te_uppercase",
        send: post!("Transfer-Encoding: CHUNKED\r\n", hello_chunked!()),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "te_chunked_twice_one_header",
        // RFC 9112 §7: chunked must not be applied more than once.
        send: post!("Transfer-Encoding: chunked, chunked\r\n", hello_chunked!()),
        ..REFUSED
    },
    Vector {
        name: "te_chunked_twice_two_headers",
        send: post!(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            hello_chunked!()
        ),
        ..REFUSED
    },
    Vector {
        name: "te_chunked_then_identity_header",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "hello"
        ),
        upstream: Nothing,
        answer: Status(400),
        ..V
    },
    Vector {
        name: "te_identity_chunked",
        send: post!("Transfer-Encoding: identity, chunked\r\n", hello_chunked!()),
        answer: Status(501),
        upstream: Nothing,
        ..V
    },
    Vector {
        name: "te_chunked_identity",
        // chunked is not the final coding: the length cannot be known (RFC 9112 §6.3).
        send: post!("Transfer-Encoding: chunked, identity\r\n", hello_chunked!()),
        ..REFUSED
    },
    Vector {
        name: "te_gzip_chunked",
        send: post!("Transfer-Encoding: gzip, chunked\r\n", hello_chunked!()),
        answer: Status(501),
        upstream: Nothing,
        ..V
    },
    Vector {
        name: "te_quoted",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding: \"chunked\"\r\n",
            "hello"
        ),
        upstream: Nothing,
        answer: Status(400),
        ..V
    },
    Vector {
        name: "te_leading_comma",
        send: post!("Transfer-Encoding: , chunked\r\n", hello_chunked!()),
        answer: Status(501),
        ..REFUSED
    },
    Vector {
        name: "te_trailing_comma",
        send: post!("Transfer-Encoding: chunked,\r\n", hello_chunked!()),
        ..REFUSED
    },
    Vector {
        name: "te_vertical_tab",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\x0b\r\n",
            "hello"
        ),
        ..REFUSED
    },
    Vector {
        name: "te_nul",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding: chu\0nked\r\n",
            "hello"
        ),
        ..REFUSED
    },
    Vector {
        name: "te_obs_fold_value",
        send: post!(
            "Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n",
            "hello"
        ),
        ..REFUSED
    },
    Vector {
        name: "te_folded_onto_previous",
        send: post!(
            "Content-Length: 5\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n",
            "hello"
        ),
        ..REFUSED
    },
    Vector {
        name: "te_empty",
        send: post!("Content-Length: 5\r\nTransfer-Encoding: \r\n", "hello"),
        ..REFUSED
    },
    Vector {
        name: "te_underscore_name",
        // Not Transfer-Encoding at all: Content-Length frames the body.
        send: post!(
            "Content-Length: 5\r\nTransfer_Encoding: chunked\r\n",
            "hello"
        ),
        checks: &[Body(0, "hello"), Lacks(0, "transfer-encoding")],
        ..V
    },
    Vector {
        name: "te_in_http10",
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        send: s!(
            "POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n"
        ),
        ..REFUSED
    },
];

/// Header field syntax (RFC 9110 §5, RFC 9112 §5).
const HEADERS: &[Vector] = &[
    Vector {
        name: "header_space_before_colon",
        send: get!("X-A : 1\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_tab_before_colon",
        send: get!("X-A\t: 1\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_without_colon",
        send: get!("X-A\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_empty_name",
        send: get!(": v\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_space_in_name",
        send: get!("X A: 1\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_at_sign_in_name",
        send: get!("X@A: 1\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_non_ascii_name",
        send: b"GET / HTTP/1.1\r\nHost: t\r\nX-\xc3\xa9: 1\r\n\r\n",
        ..REFUSED
    },
    Vector {
        name: "header_nul_in_value",
        send: get!("X-A: a\0b\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_cr_in_value",
        send: get!("X-A: a\rb\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_del_in_value",
        send: get!("X-A: a\x7fb\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_obs_text_value",
        // obs-text (0x80-0xFF) is allowed in values.
        send: b"GET / HTTP/1.1\r\nHost: t\r\nX-A: caf\xe9\r\n\r\n",
        checks: &[Has(0, "x-a")],
        ..V
    },
    Vector {
        name: "header_obs_fold",
        send: get!("X-A: 1\r\n 2\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_first_line_folded",
        send: s!("GET / HTTP/1.1\r\n Host: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "header_underscore_name",
        send: get!("X_A: 1\r\n"),
        checks: &[Has(0, "x_a")],
        ..V
    },
    Vector {
        name: "header_value_trailing_whitespace",
        send: get!("X-A: 1 \t\r\n"),
        checks: &[Value(0, "x-a", "1")],
        ..V
    },
    Vector {
        name: "bare_lf_line_endings",
        // RFC 9112 §2.2: a recipient may take a bare LF as a line end.
        send: s!("GET / HTTP/1.1\nHost: t\n\n"),
        ..V
    },
    Vector {
        name: "bare_lf_one_header",
        send: s!("GET / HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n"),
        ..V
    },
    Vector {
        name: "bare_cr_line_endings",
        send: s!("GET / HTTP/1.1\rHost: t\r\r"),
        answer: Status(408),
        ..REFUSED
    },
    Vector {
        name: "header_value_10k",
        send: get!("X-Big: @PAD@\r\n"),
        pad: Pad::Bytes(10_000),
        why: "a limit, not framing: max_header_bytes is 16 KiB by default, nginx reads heads into 8 KiB buffers",
        ..V
    },
    Vector {
        name: "header_value_20k",
        send: get!("X-Big: @PAD@\r\n"),
        pad: Pad::Bytes(20_000),
        answer: Status(431),
        ..REFUSED
    },
    Vector {
        name: "header_value_100k",
        send: get!("X-Big: @PAD@\r\n"),
        pad: Pad::Bytes(100_000),
        answer: Status(431),
        ..REFUSED
    },
    Vector {
        name: "headers_90",
        send: get!("@PAD@"),
        pad: Pad::Headers(90),
        ..V
    },
    Vector {
        name: "headers_150",
        send: get!("@PAD@"),
        pad: Pad::Headers(150),
        answer: Status(431),
        ..REFUSED
    },
];

/// Request lines and targets (RFC 9112 §3).
const REQUEST_LINES: &[Vector] = &[
    Vector {
        name: "line_double_space",
        send: s!("GET  / HTTP/1.1\r\nHost: t\r\n\r\n"),
        why: "stricter: the request line is method SP target SP version (RFC 9112 §3); both references tolerate the extra space",
        ..REFUSED
    },
    Vector {
        name: "line_trailing_space",
        send: s!("GET / HTTP/1.1 \r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "line_tabs",
        send: s!("GET\t/\tHTTP/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "line_lowercase_method",
        // Methods are case-sensitive tokens: `get` is another (unknown) method.
        send: s!("get / HTTP/1.1\r\nHost: t\r\n\r\n"),
        why: "methods are case-sensitive tokens (RFC 9110 §9.1): `get` is a method the backend may refuse; nginx only takes upper case",
        ..V
    },
    Vector {
        name: "line_unknown_method",
        send: s!("FOO / HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..V
    },
    Vector {
        name: "line_method_bad_char",
        send: s!("G(T / HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "line_http_1_2",
        send: s!("GET / HTTP/1.2\r\nHost: t\r\n\r\n"),
        why: "stricter: hyper speaks HTTP/1.0 and 1.1 only; RFC 9112 §2.3 would let a server take 1.2 as 1.1, as both references do",
        ..REFUSED
    },
    Vector {
        name: "line_http_2_0",
        send: s!("GET / HTTP/2.0\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "line_lowercase_version",
        send: s!("GET / http/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "line_version_missing_digits",
        send: s!("GET / HTTP/\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "line_leading_crlf",
        // RFC 9112 §2.2: a server should ignore an empty line before the request line.
        send: s!("\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..V
    },
    Vector {
        name: "http09",
        send: s!("GET /\r\n"),
        answer: Status(400),
        upstream: Nothing,
        ..V
    },
    Vector {
        name: "http10_without_host",
        send: s!("GET / HTTP/1.0\r\n\r\n"),
        ..V
    },
    Vector {
        name: "http10_closes",
        // A 1.0 request without keep-alive ends the connection: the second is never read.
        send: s!("GET / HTTP/1.0\r\n\r\nGET /two HTTP/1.0\r\n\r\n"),
        checks: &[ClientClosed, Target(0, "/")],
        ..V
    },
    Vector {
        name: "http10_keep_alive",
        send: s!("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ..V
    },
    Vector {
        name: "target_space",
        send: s!("GET /a b HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "target_nul",
        send: s!("GET /a\0b HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "target_non_ascii",
        send: b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
        answer: Status(200),
        upstream: Requests(1),
        why: "as nginx: hyper passes bytes >= 0x80 in the target on (the route matches its normal form); HAProxy refuses",
        ..REFUSED
    },
    Vector {
        name: "target_fragment",
        send: s!("GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n"),
        why: "as nginx: the target is passed on; HAProxy refuses a # in it",
        checks: &[Target(0, "/a")],
        ..V
    },
    Vector {
        name: "target_asterisk_get",
        // No route matches a target that is not a path.
        send: s!("GET * HTTP/1.1\r\nHost: t\r\n\r\n"),
        answer: Status(404),
        ..REFUSED
    },
    Vector {
        name: "target_asterisk_options",
        // No route matches `*`: the balancer answers it (404) instead of guessing a backend.
        send: s!("OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"),
        answer: Status(404),
        upstream: Nothing,
        ..V
    },
    Vector {
        name: "target_dot_segments",
        send: s!("GET /a/../b HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..V
    },
    Vector {
        name: "absolute_form",
        // RFC 9112 §3.2.2: a server must accept absolute-form; the backend gets origin-form.
        send: s!("GET http://t/p?q HTTP/1.1\r\nHost: t\r\n\r\n"),
        checks: &[Target(0, "/p?q")],
        ..V
    },
    Vector {
        name: "absolute_form_host_differs",
        // RFC 9112 §3.2.2: the target's authority wins over Host, but a proxy forwarding Host as
        // sent would route by one host and hand the backend another: refused, as HAProxy does.
        send: s!("GET http://a.example/p HTTP/1.1\r\nHost: b.example\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "absolute_form_https",
        send: s!("GET https://t/p HTTP/1.1\r\nHost: t\r\n\r\n"),
        checks: &[Target(0, "/p")],
        ..V
    },
    Vector {
        name: "absolute_form_userinfo",
        send: s!("GET http://u:p@t/ HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "absolute_form_without_host",
        send: s!("GET http://t/p HTTP/1.1\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "authority_form_get",
        // Its authority `t:80` is not the Host `t`.
        send: s!("GET t:80 HTTP/1.1\r\nHost: t\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "connect_method",
        // No route matches an authority: CONNECT is never tunnelled.
        send: s!("CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n"),
        answer: Status(404),
        ..REFUSED
    },
    Vector {
        name: "target_20k",
        send: s!("GET /@PAD@ HTTP/1.1\r\nHost: t\r\n\r\n"),
        pad: Pad::Bytes(20_000),
        answer: Status(431),
        ..REFUSED
    },
    Vector {
        name: "head_request",
        send: s!("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"),
        backend: &[keep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")],
        ..V
    },
];

/// Host (RFC 9112 §3.2: 400 for none, several, or an invalid one in HTTP/1.1).
const HOST: &[Vector] = &[
    Vector {
        name: "host_missing",
        send: s!("GET / HTTP/1.1\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_duplicate_differ",
        send: get!("Host: u\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_duplicate_same",
        send: get!("Host: t\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_empty",
        send: s!("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_list",
        send: s!("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_space_inside",
        send: s!("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_userinfo",
        send: s!("GET / HTTP/1.1\r\nHost: u@t\r\n\r\n"),
        why: "stricter: Host is uri-host[:port] (RFC 9110 §7.2), and userinfo hides the real host; both references pass it on",
        ..REFUSED
    },
    Vector {
        name: "host_with_path",
        send: s!("GET / HTTP/1.1\r\nHost: t/x\r\n\r\n"),
        ..REFUSED
    },
    Vector {
        name: "host_with_port",
        send: s!("GET / HTTP/1.1\r\nHost: t:8080\r\n\r\n"),
        checks: &[Value(0, "host", "t:8080")],
        ..V
    },
    Vector {
        name: "host_bad_port",
        // Passed on as both references do: the Host check is about where routing and the backend could disagree.
        send: s!("GET / HTTP/1.1\r\nHost: t:x8\r\n\r\n"),
        answer: Status(200),
        upstream: Requests(1),
        ..REFUSED
    },
    Vector {
        name: "host_ipv6",
        send: s!("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
        ..V
    },
    Vector {
        name: "host_trailing_dot",
        send: s!("GET / HTTP/1.1\r\nHost: t.\r\n\r\n"),
        ..V
    },
    Vector {
        name: "host_space_before_colon",
        send: s!("GET / HTTP/1.1\r\nHost : t\r\n\r\n"),
        ..REFUSED
    },
];

/// Connection-specific headers (RFC 9110 §7.6.1): none reaches the backend.
const HOP_BY_HOP: &[Vector] = &[
    Vector {
        name: "connection_close",
        send: get!("Connection: close\r\n"),
        checks: &[ClientClosed],
        ..V
    },
    Vector {
        name: "connection_close_then_pipelined",
        send: s!(
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "GET /two HTTP/1.1\r\nHost: t\r\n\r\n"
        ),
        checks: &[ClientClosed, Target(0, "/")],
        ..V
    },
    Vector {
        name: "connection_names_header",
        send: get!("Connection: X-Secret\r\nX-Secret: 1\r\n"),
        checks: &[Lacks(0, "x-secret")],
        ..V
    },
    Vector {
        name: "connection_names_several",
        send: get!("Connection: keep-alive, X-A,X-B\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n"),
        checks: &[Lacks(0, "x-a"), Lacks(0, "x-b"), Has(0, "x-c")],
        ..V
    },
    Vector {
        name: "connection_two_headers",
        send: get!("Connection: keep-alive\r\nConnection: X-A\r\nX-A: 1\r\n"),
        checks: &[Lacks(0, "x-a")],
        ..V
    },
    Vector {
        name: "keep_alive_header",
        send: get!("Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"),
        checks: &[Lacks(0, "keep-alive")],
        ..V
    },
    Vector {
        name: "te_header_gzip",
        send: get!("TE: gzip\r\nConnection: TE\r\n"),
        checks: &[Lacks(0, "te")],
        ..V
    },
    Vector {
        name: "te_header_trailers",
        send: get!("TE: trailers\r\nConnection: TE\r\n"),
        ..V
    },
    Vector {
        name: "upgrade_without_connection_option",
        // Not a protocol switch: Upgrade is connection-specific and goes no further.
        send: get!("Upgrade: websocket\r\n"),
        checks: &[Lacks(0, "upgrade")],
        ..V
    },
    Vector {
        name: "connection_names_content_length",
        // Dropping the framing header a client listed would desync the backend.
        send: post!(
            "Connection: Content-Length\r\nContent-Length: 5\r\n",
            "hello"
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "connection_names_transfer_encoding",
        send: post!(
            "Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n",
            hello_chunked!()
        ),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "connection_names_host",
        send: get!("Connection: Host\r\n"),
        checks: &[Has(0, "host")],
        ..V
    },
    Vector {
        name: "proxy_connection",
        send: get!("Proxy-Connection: keep-alive\r\n"),
        ..V
    },
    Vector {
        name: "http2_settings_header",
        send: get!("Connection: HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
        checks: &[Lacks(0, "http2-settings")],
        ..V
    },
];

/// Expect (RFC 9110 §10.1.1).
const EXPECT: &[Vector] = &[
    Vector {
        name: "expect_100_then_body",
        send: post!("Expect: 100-continue\r\nContent-Length: 5\r\n", ""),
        then: b"hello",
        answer: Statuses(&[100, 200]),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "expect_100_body_at_once",
        send: post!("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "expect_100_chunked",
        send: post!("Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n", ""),
        then: s!(hello_chunked!()),
        checks: &[Body(0, "hello")],
        ..V
    },
    Vector {
        name: "expect_100_without_body",
        send: get!("Expect: 100-continue\r\n"),
        ..V
    },
    Vector {
        name: "expect_unknown",
        // RFC 9110 §10.1.1 allows a 417; all three pass it on.
        send: post!("Expect: something-else\r\nContent-Length: 5\r\n", "hello"),
        answer: Status(200),
        upstream: Requests(1),
        ..REFUSED
    },
    Vector {
        name: "expect_100_http10",
        // RFC 9110 §10.1.1: ignored in an HTTP/1.0 request.
        send: s!("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
        answer: Statuses(&[200]),
        checks: &[Body(0, "hello")],
        ..V
    },
];

/// Upgrades and protocol switches.
const UPGRADES: &[Vector] = &[
    Vector {
        name: "websocket_upgrade",
        send: get!(websocket!()),
        then: b"ping",
        backend: &[SWITCH],
        answer: Statuses(&[101]),
        checks: &[Tunnel("ping")],
        ..V
    },
    Vector {
        name: "websocket_upgrade_early_data",
        // Bytes right behind the head belong to the new protocol.
        send: s!("GET / HTTP/1.1\r\nHost: t\r\n", websocket!(), "\r\nping"),
        backend: &[SWITCH],
        answer: Statuses(&[101]),
        checks: &[Tunnel("ping")],
        ..V
    },
    Vector {
        name: "upgrade_declined",
        send: get!(websocket!()),
        checks: &[Has(0, "upgrade")],
        ..V
    },
    Vector {
        name: "upgrade_with_length",
        send: s!(
            "POST / HTTP/1.1\r\nHost: t\r\n",
            websocket!(),
            "Content-Length: 5\r\n\r\nhello"
        ),
        why: "deliberate: a body before a protocol switch would reach the backend as the first bytes of the new protocol",
        ..REFUSED
    },
    Vector {
        name: "upgrade_with_chunked_body",
        send: s!(
            "POST / HTTP/1.1\r\nHost: t\r\n",
            websocket!(),
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        why: "deliberate: a body before a protocol switch would reach the backend as the first bytes of the new protocol",
        ..REFUSED
    },
    Vector {
        name: "upgrade_with_zero_length",
        send: s!(
            "POST / HTTP/1.1\r\nHost: t\r\n",
            websocket!(),
            "Content-Length: 0\r\n\r\n"
        ),
        backend: &[SWITCH],
        then: b"ping",
        answer: Statuses(&[101]),
        checks: &[Tunnel("ping")],
        ..V
    },
    Vector {
        name: "h2c_upgrade",
        send: get!(
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        ),
        ..V
    },
    Vector {
        name: "connection_upgrade_without_upgrade",
        send: get!("Connection: Upgrade\r\n"),
        ..V
    },
    Vector {
        name: "h2_preface_after_h1",
        send: GET,
        then: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        answer: Statuses(&[200, 400]),
        ..V
    },
    Vector {
        name: "h2_preface_pipelined",
        send: s!("GET / HTTP/1.1\r\nHost: t\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        answer: Statuses(&[200, 400]),
        ..V
    },
];

/// Several requests on one connection.
const PIPELINING: &[Vector] = &[
    Vector {
        name: "pipelined_two_gets",
        send: s!(
            "GET /one HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /two HTTP/1.1\r\nHost: t\r\n\r\n"
        ),
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[Target(0, "/one"), Target(1, "/two")],
        ..V
    },
    Vector {
        name: "pipelined_post_then_get",
        send: s!(
            "POST /one HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            "GET /two HTTP/1.1\r\nHost: t\r\n\r\n"
        ),
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[Body(0, "hello"), Target(1, "/two")],
        ..V
    },
    Vector {
        name: "keep_alive_second_request",
        send: GET,
        then: s!("GET /two HTTP/1.1\r\nHost: t\r\n\r\n"),
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[Target(1, "/two")],
        ..V
    },
    Vector {
        name: "pipelined_then_garbage",
        send: s!("GET / HTTP/1.1\r\nHost: t\r\n\r\n", "NOT HTTP\r\n\r\n"),
        checks: &[ClientClosed],
        ..V
    },
];

/// Responses from misbehaving backends (request: `GET /`).
const RESPONSES: &[Vector] = &[
    Vector {
        name: "resp_cl_and_te",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n"
        ))],
        checks: &[ClientBody("hello")],
        ..V
    },
    Vector {
        name: "resp_duplicate_cl_same",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientBody("ok")],
        ..V
    },
    Vector {
        name: "resp_duplicate_cl_differ",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"
        ))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_cl_plus_sign",
        backend: &[keep(s!("HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_cl_negative",
        backend: &[keep(s!("HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_cl_not_a_number",
        backend: &[keep(s!("HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_te_gzip_close_delimited",
        backend: &[close(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"
        ))],
        checks: &[ClientBody("hello")],
        why: "RFC 9112 §6.3: a response whose last coding is not chunked runs until the close, as nginx reads it; HAProxy answers 502",
        ..V
    },
    Vector {
        name: "resp_chunk_size_invalid",
        backend: &[close(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        ))],
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_chunk_size_overflow",
        backend: &[close(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"
        ))],
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_chunk_extension_and_trailer",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
        ))],
        checks: &[ClientBody("hello")],
        ..V
    },
    Vector {
        name: "resp_status_four_digits",
        backend: &[keep(s!("HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_status_two_digits",
        backend: &[keep(s!("HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_status_missing",
        backend: &[keep(s!("HTTP/1.1 OK\r\nContent-Length: 2\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_status_without_reason",
        backend: &[keep(s!("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"))],
        ..V
    },
    Vector {
        name: "resp_status_600",
        // A three-digit status is passed on, as both references do (RFC 9110 §15: clients read an unknown one by its class).
        backend: &[keep(s!(
            "HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nok"
        ))],
        answer: Status(600),
        ..V
    },
    Vector {
        name: "resp_status_099",
        backend: &[keep(s!(
            "HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nok"
        ))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_not_http",
        backend: &[close(s!("hello world\r\n\r\n"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_http_2_0_version",
        backend: &[keep(s!("HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))],
        answer: Status(502),
        why: "stricter: HTTP/2.0 in an HTTP/1 status line is not a version this connection speaks; both references take it as 1.x",
        ..V
    },
    Vector {
        name: "resp_lowercase_version",
        backend: &[keep(s!("http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_http10",
        backend: &[keep(s!("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))],
        checks: &[ClientBody("ok")],
        ..V
    },
    Vector {
        name: "resp_close_delimited",
        backend: &[close(s!("HTTP/1.1 200 OK\r\n\r\nbody"))],
        checks: &[ClientBody("body")],
        ..V
    },
    Vector {
        name: "resp_http10_close_delimited",
        backend: &[close(s!("HTTP/1.0 200 OK\r\n\r\nbody"))],
        checks: &[ClientBody("body")],
        ..V
    },
    Vector {
        name: "resp_100_unsolicited",
        backend: &[keep(s!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientBody("ok")],
        why: "the balancer (hyper's client) drops interim responses and passes the final one; HAProxy passes them all; nginx takes the first 1xx as the final answer and closes. RFC 9110 §15.2 asks a proxy to forward 1xx: a known gap",
        ..V
    },
    Vector {
        name: "resp_103_early_hints",
        backend: &[keep(s!(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientBody("ok")],
        why: "the balancer (hyper's client) drops interim responses and passes the final one; HAProxy passes them all; nginx takes the first 1xx as the final answer and closes. RFC 9110 §15.2 asks a proxy to forward 1xx: a known gap",
        ..V
    },
    Vector {
        name: "resp_many_1xx",
        backend: &[keep(s!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientBody("ok")],
        why: "the balancer (hyper's client) drops interim responses and passes the final one; HAProxy passes them all; nginx takes the first 1xx as the final answer and closes. RFC 9110 §15.2 asks a proxy to forward 1xx: a known gap",
        ..V
    },
    Vector {
        name: "resp_101_unsolicited",
        backend: &[SWITCH],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_204_with_body",
        // The bytes after a 204 head are not its body: a next response must not be them.
        send: s!("GET /one HTTP/1.1\r\nHost: t\r\n\r\n"),
        then: s!("GET /two HTTP/1.1\r\nHost: t\r\n\r\n"),
        backend: &[
            keep(s!(
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"
            )),
            OK,
        ],
        answer: Status(204),
        upstream: Requests(2),
        checks: &[ClientClean],
        ..V
    },
    Vector {
        name: "resp_204_spliced_response",
        // Response queue poisoning: what follows a 204 is a whole response of the backend's.
        send: s!("GET /one HTTP/1.1\r\nHost: t\r\n\r\n"),
        then: s!("GET /two HTTP/1.1\r\nHost: t\r\n\r\n"),
        backend: &[
            keep(s!(
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 200 OK\r\nX-Spliced: 1\r\nContent-Length: 0\r\n\r\n"
            )),
            OK,
        ],
        answer: Status(204),
        upstream: Requests(2),
        checks: &[ClientLacks("x-spliced")],
        ..V
    },
    Vector {
        name: "resp_304_with_body",
        send: get!("If-None-Match: \"x\"\r\n"),
        then: s!("GET /two HTTP/1.1\r\nHost: t\r\n\r\n"),
        backend: &[
            keep(s!(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello"
            )),
            OK,
        ],
        answer: Status(304),
        upstream: Requests(2),
        checks: &[ClientClean],
        ..V
    },
    Vector {
        name: "resp_head_with_body",
        send: s!("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"),
        then: s!("HEAD /two HTTP/1.1\r\nHost: t\r\n\r\n"),
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        ))],
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[ClientClean],
        ..V
    },
    Vector {
        name: "resp_extra_bytes_after_body",
        send: s!("GET /one HTTP/1.1\r\nHost: t\r\n\r\n"),
        then: s!("GET /two HTTP/1.1\r\nHost: t\r\n\r\n"),
        backend: &[
            keep(s!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Spliced: 1\r\nContent-Length: 0\r\n\r\n"
            )),
            OK,
        ],
        answer: Statuses(&[200, 200]),
        upstream: Requests(2),
        checks: &[ClientLacks("x-spliced")],
        ..V
    },
    Vector {
        name: "resp_early_close",
        backend: &[close(b"")],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_close_mid_head",
        backend: &[close(s!("HTTP/1.1 200 OK\r\nContent-Le"))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_close_mid_body",
        backend: &[close(s!(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"
        ))],
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_chunked_truncated",
        backend: &[close(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        ))],
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_header_space_before_colon",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok"
        ))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_obs_fold",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok"
        ))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_bare_lf",
        backend: &[keep(s!("HTTP/1.1 200 OK\nContent-Length: 2\n\nok"))],
        checks: &[ClientBody("ok")],
        ..V
    },
    Vector {
        name: "resp_nul_in_header",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok"
        ))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_header_without_colon",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 2\r\n\r\nok"
        ))],
        answer: Status(502),
        ..V
    },
    Vector {
        name: "resp_connection_names_header",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\n",
            "Content-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientLacks("x-internal")],
        ..V
    },
    Vector {
        name: "resp_keep_alive_header",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=99\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientLacks("keep-alive")],
        ..V
    },
    Vector {
        name: "resp_upgrade_header_on_200",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientLacks("upgrade")],
        ..V
    },
    Vector {
        name: "resp_chunked_to_http10_client",
        // An HTTP/1.0 client cannot read chunked: the proxy must de-chunk.
        send: s!("GET / HTTP/1.0\r\n\r\n"),
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        checks: &[ClientLacks("transfer-encoding"), ClientBody("hello")],
        ..V
    },
    Vector {
        name: "resp_body_stalls",
        // The backend sends half the declared body and then nothing, keeping the connection:
        // the proxy must give up (here after 2 s) rather than hold both connections for ever.
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"
        ))],
        until_close: true,
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_chunked_body_stalls",
        backend: &[keep(s!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        ))],
        until_close: true,
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_body_stalls_before_first_byte",
        backend: &[keep(s!("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"))],
        until_close: true,
        answer: Cut,
        ..V
    },
    Vector {
        name: "resp_head_stalls",
        backend: &[keep(s!("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n"))],
        until_close: true,
        answer: Status(504),
        ..V
    },
    Vector {
        name: "resp_503_passed_on",
        backend: &[keep(s!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
        ))],
        answer: Status(503),
        checks: &[ClientBody("busy")],
        ..V
    },
    Vector {
        name: "resp_connection_close",
        backend: &[close(s!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        ))],
        checks: &[ClientBody("ok")],
        ..V
    },
];

/// Every vector, the huge responses built here (their bytes do not fit a literal).
pub fn all() -> Vec<Vector> {
    let mut all: Vec<Vector> = [
        FRAMING,
        SMUGGLING,
        HEADERS,
        REQUEST_LINES,
        HOST,
        HOP_BY_HOP,
        EXPECT,
        UPGRADES,
        PIPELINING,
        RESPONSES,
    ]
    .concat();
    let huge: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(70_000)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    all.push(Vector {
        name: "resp_head_70k",
        backend: Box::leak(Box::new([keep(huge)])),
        answer: Status(502),
        ..V
    });
    all
}
