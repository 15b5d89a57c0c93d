//! Consistent hashing through the proxy: a user stays on one backend, users spread over all,
//! a drain moves only the drained backend's users (and they come back), a hot key spills.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tests::{ConfigBuilder, Proxy, get, start_backends};

async fn served_by(proxy: &Proxy, user: &str) -> String {
    let mut request = get("/", "test.local");
    request
        .headers_mut()
        .insert("x-user-id", user.parse().unwrap());
    let reply = tests::send_http1(proxy.addr(), request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn placement(proxy: &Proxy, users: usize) -> BTreeMap<String, String> {
    let mut placed = BTreeMap::new();
    for i in 0..users {
        let user = format!("user-{i}");
        let backend = served_by(proxy, &user).await;
        placed.insert(user, backend);
    }
    placed
}

#[tokio::test]
async fn a_user_keeps_its_backend_and_a_drain_moves_only_its_users() {
    let backends = start_backends(&[0, 0, 0, 0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .policy("consistent-hash")
            .hash("header:x-user-id", Some(1.25))
            .backends(&backends),
    )
    .await;
    let before = placement(&proxy, 200).await;
    assert_eq!(
        placement(&proxy, 200).await,
        before,
        "same user, same backend"
    );
    let used: BTreeSet<&String> = before.values().collect();
    assert_eq!(used.len(), 4, "200 users reach all 4 backends: {used:?}");

    let drained = backends[1].local_addr();
    // What the drained backend answers, asked directly.
    let drained_body = Some(
        tests::send_http1(drained, get("/", "test.local"))
            .await
            .body,
    );
    assert!(
        before.values().any(|b| Some(b) == drained_body.as_ref()),
        "the drained backend had users"
    );
    let reply = proxy
        .admin_post(&format!("/backends/default/{drained}/drain"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let during = placement(&proxy, 200).await;
    for (user, backend) in &before {
        if Some(backend) == drained_body.as_ref() {
            assert_ne!(
                &during[user], backend,
                "{user} stayed on the drained backend"
            );
        } else {
            assert_eq!(
                &during[user], backend,
                "{user} moved though its backend stayed"
            );
        }
    }
    let reply = proxy
        .admin_post(&format!("/backends/default/{drained}/undrain"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        placement(&proxy, 200).await,
        before,
        "users come back after undrain"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_hot_key_spills_to_the_next_backend_at_its_bound() {
    let backends = start_backends(&[300, 300, 300, 300]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .policy("consistent-hash")
            .hash("header:x-user-id", Some(1.0))
            .backends(&backends),
    )
    .await;
    // 8 requests of one user at once, each held 300 ms by its backend: with the bound
    // ⌈(in flight + 1) ÷ 4⌉ the owner takes 2 and the rest walk the ring.
    let replies: Vec<_> = (0..8)
        .map(|_| {
            let address = proxy.addr();
            tokio::spawn(async move {
                let mut request = get("/", "test.local");
                request
                    .headers_mut()
                    .insert("x-user-id", "hot".parse().unwrap());
                tests::send_http1(address, request).await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for reply in replies {
        let reply = tokio::time::timeout(Duration::from_secs(10), reply)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(reply.status, 200);
        bodies.push(reply.body);
    }
    let distinct: BTreeSet<&String> = bodies.iter().collect();
    assert!(
        distinct.len() >= 3,
        "a hot key must spill over several backends: {bodies:?}"
    );
    // Without the bound, the same burst stays on one backend.
    proxy.stop().await;
    let unbounded = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .policy("consistent-hash")
            .hash("header:x-user-id", None)
            .backends(&backends),
    )
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(served_by(&unbounded, "hot").await);
    }
    assert_eq!(seen.len(), 1, "unbounded: one owner for one key: {seen:?}");
    unbounded.stop().await;
}
