//! Demo mode: the balancer in front of four demo backends answers from all of them.

use std::collections::BTreeSet;

use balancer_tokio::{Demo, DemoPorts};
use tests::Proxy;

#[tokio::test]
async fn demo_mode_answers_from_all_four_backends() {
    // Port 0: the demo's wiring on free ports (the binary's default ports are tested in
    // balancer-tokio/tests/cli.rs when they are free).
    let demo = Demo::start(DemoPorts {
        balancer: 0,
        first_backend: 0,
        admin: 0,
    })
    .await
    .expect("demo starts");
    let banner = demo.banner();
    assert_eq!(banner.len(), 8, "{banner:?}");
    assert!(
        banner[5].starts_with("balancer listening on "),
        "{banner:?}"
    );
    assert!(banner[6].starts_with("admin listening on "), "{banner:?}");
    assert!(
        banner[7].starts_with("try: curl http://127.0.0.1:"),
        "{banner:?}"
    );
    let Demo { backends, balancer } = demo;
    let proxy = Proxy::from_running(balancer);

    let mut answers = BTreeSet::new();
    for _ in 0..8 {
        let reply = proxy.get("/").await;
        assert_eq!(reply.status, 200);
        answers.insert(reply.body);
    }
    let expected: BTreeSet<String> = (1..=4).map(|n| format!("Hello from #{n}\n")).collect();
    assert_eq!(answers, expected);

    assert_eq!(proxy.in_flight(), 0, "every dispatch got its done");
    proxy.stop().await;
    tests::stop_backends(backends).await;
}
