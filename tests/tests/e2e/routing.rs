//! Routing: by host (exact and wildcard), by longest path prefix, by listener port; 404 otherwise.

use tests::{ConfigBuilder, Proxy, free_port, get, start_backends};

#[tokio::test]
async fn routes_by_host_path_and_port() {
    let backends = start_backends(&[0, 0, 0, 0, 0]).await;
    let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|i| backends[i].local_addr());
    let main_port = free_port();
    let admin_port = free_port();
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listener("main", format!("127.0.0.1:{main_port}"))
            .listener("admin", format!("127.0.0.1:{admin_port}"))
            .pool("exact", |p| p.backends([a]))
            .pool("wildcard", |p| p.backends([b]))
            .pool("api", |p| p.backends([c]))
            .pool("api_v2", |p| p.backends([d]))
            .pool("admin", |p| p.backends([e]))
            .route(|r| r.host("shop.example.com").pool("exact"))
            .route(|r| r.host("*.example.com").pool("wildcard"))
            .route(|r| r.path_prefix("/api").pool("api"))
            .route(|r| r.path_prefix("/api/v2").pool("api_v2"))
            .route(|r| r.port(admin_port).pool("admin")),
    )
    .await;
    let main = proxy.running().local_addr("main").unwrap();
    let admin = proxy.running().local_addr("admin").unwrap();

    let cases = [
        (main, "shop.example.com", "/", "Hello from #1\n"),
        (main, "SHOP.example.com:8080", "/", "Hello from #1\n"),
        (main, "blog.example.com", "/", "Hello from #2\n"),
        (main, "a.b.example.com", "/x", "Hello from #2\n"),
        (main, "other.org", "/api", "Hello from #3\n"),
        (main, "other.org", "/api/users", "Hello from #3\n"),
        (main, "other.org", "/api/v2/users", "Hello from #4\n"),
        (admin, "other.org", "/", "Hello from #5\n"),
    ];
    for (address, host, path, expected) in cases {
        let reply = proxy.send(address, get(path, host)).await;
        assert_eq!(reply.status, 200, "{host}{path}");
        assert_eq!(reply.body, expected, "{host}{path} on {address}");
    }

    // No route: neither host nor path nor port matches.
    for (host, path) in [("example.com", "/"), ("other.org", "/apix")] {
        let reply = proxy.send(main, get(path, host)).await;
        assert_eq!(reply.status, 404, "{host}{path}");
        assert!(
            reply.body.starts_with("no route for host"),
            "{}",
            reply.body
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_path_prefix_cannot_be_passed_by_with_dots_slashes_or_escapes() {
    let backends = start_backends(&[0, 0]).await;
    let [internal, public] = [0, 1].map(|i| backends[i].local_addr());
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .pool("internal", |p| p.backends([internal]))
            .pool("public", |p| p.backends([public]))
            .route(|r| r.path_prefix("/admin").pool("internal"))
            .route(|r| r.path_prefix("/").pool("public")),
    )
    .await;
    for path in [
        "/admin",
        "/x/../admin",
        "/./admin",
        "//admin",
        "/%61dmin",
        "/public/%2e%2e/admin/x",
    ] {
        let reply = proxy.send(proxy.addr(), get(path, "a.test")).await;
        assert_eq!(
            reply.body, "Hello from #1\n",
            "{path} must take the /admin route"
        );
    }
    let reply = proxy
        .send(proxy.addr(), get("/administrator", "a.test"))
        .await;
    assert_eq!(reply.body, "Hello from #2\n");
    proxy.stop().await;
}
