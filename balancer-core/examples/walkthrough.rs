//! A walk through the work/done protocol on four backends, printing every decision.
//!
//! Run with `cargo run -p balancer-core --example walkthrough`.

use std::time::Duration;

use balancer_core::{
    BackendId, Decision, FailureKind, Outcome, PolicyKind, RequestId, RequestInfo, Scheduler,
    SchedulerConfig, Timestamp,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() {
    // The driver owns time and randomness: here a virtual clock and a seeded ChaCha8.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut now = Timestamp::ZERO;
    let mut scheduler = Scheduler::new(SchedulerConfig::new(PolicyKind::LeastPending));
    let backends: Vec<BackendId> = (0..4)
        .map(|_| scheduler.add_backend(now, 1).expect("weight 1 is valid"))
        .collect();
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    println!(
        "policy {}, backends {}",
        scheduler.policy(),
        names.join(" ")
    );
    print_load(&scheduler, now);

    let mut in_flight: Vec<RequestId> = Vec::new();
    println!("\n-- six requests arrive; each goes to the least busy backend");
    for _ in 0..6 {
        work(&mut scheduler, now, &mut rng, &mut in_flight);
    }
    print_load(&scheduler, now);

    println!("\n-- the first two finish: their backends become lighter");
    now = now + Duration::from_millis(3);
    for request in in_flight.drain(..2) {
        let done = scheduler
            .handle_done(now, request, Outcome::Success, &mut rng)
            .expect("each dispatch gets exactly one done");
        println!(
            "done   {request} on {} after {:?}",
            done.backend, done.latency
        );
    }
    print_load(&scheduler, now);
    work(&mut scheduler, now, &mut rng, &mut in_flight);

    println!("\n-- b3 is drained: it finishes its work but takes no more");
    scheduler.drain(backends[3]).expect("b3 is in the set");
    for _ in 0..3 {
        work(&mut scheduler, now, &mut rng, &mut in_flight);
    }
    print_load(&scheduler, now);

    println!("\n-- misuse is an error value, never a panic");
    let finished = in_flight.remove(0);
    let _ = scheduler.handle_done(
        now,
        finished,
        Outcome::Failure(FailureKind::Reset),
        &mut rng,
    );
    match scheduler.handle_done(now, finished, Outcome::Success, &mut rng) {
        Ok(_) => unreachable!("a second done for one request is refused"),
        Err(error) => println!("error  {error}"),
    }

    println!("\n-- every backend marked down: requests are rejected");
    for &id in &backends {
        scheduler.set_up(id, false).expect("in the set");
    }
    work(&mut scheduler, now, &mut rng, &mut in_flight);

    scheduler
        .check_invariants()
        .expect("the invariants hold after every step");
    println!(
        "\ninvariants hold; {} requests still in flight",
        scheduler.in_flight()
    );
}

fn work(
    scheduler: &mut Scheduler,
    now: Timestamp,
    rng: &mut ChaCha8Rng,
    in_flight: &mut Vec<RequestId>,
) {
    match scheduler.handle_work(now, rng, RequestInfo::default(), None) {
        Decision::Dispatch { request, backend } => {
            println!("work   {request} -> dispatch to {backend}");
            in_flight.push(request);
        }
        Decision::Reject { reason } => println!("work   -> reject: {reason}"),
    }
}

fn print_load(scheduler: &Scheduler, now: Timestamp) {
    let load: Vec<String> = scheduler
        .backends(now)
        .map(|b| format!("{}:{} ({:?})", b.id, b.pending, b.state))
        .collect();
    println!("pending  {}", load.join("  "));
}
