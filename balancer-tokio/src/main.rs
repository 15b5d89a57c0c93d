//! The live HTTP load balancer (being built: see issue 5).
fn main() {
    eprintln!("balancer: the live proxy is not built yet; see issue 5");
    std::process::exit(2);
}
