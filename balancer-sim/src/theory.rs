//! Closed forms from queueing theory, in units of the mean service time, for the theory checks.

/// Mean sojourn of an M/M/1 queue at load ρ: 1/(1−ρ). Random dispatch over N identical FIFO
/// exponential servers splits a Poisson stream into N independent M/M/1 queues at load ρ.
pub fn mm1_sojourn(rho: f64) -> f64 {
    1.0 / (1.0 - rho)
}

/// Mean sojourn in the supermarket model (Mitzenmacher; Vvedenskaya et al.), N → ∞, with
/// d = 2 choices: T = Σ_{i≥1} ρ^(2^i − 2).
pub fn supermarket_d2_sojourn(rho: f64) -> f64 {
    let mut sum = 0.0;
    for i in 1..64 {
        let term = rho.powf(2f64.powi(i) - 2.0);
        sum += term;
        if term < 1e-15 {
            break;
        }
    }
    sum
}

/// Erlang C: probability that an arrival waits in an M/M/N queue with offered load a = Nρ.
pub fn erlang_c(servers: u32, rho: f64) -> f64 {
    let n = f64::from(servers);
    let a = n * rho;
    // Erlang B by the stable recursion, then C from B.
    let mut b = 1.0;
    for k in 1..=servers {
        b = a * b / (f64::from(k) + a * b);
    }
    b / (1.0 - rho * (1.0 - b))
}

/// Mean sojourn of M/M/N (one shared queue), a lower bound for any dispatcher that commits
/// each request to one FIFO server at arrival, JSQ included: 1 + C(N, a) / (N(1−ρ)).
pub fn mmn_sojourn(servers: u32, rho: f64) -> f64 {
    1.0 + erlang_c(servers, rho) / (f64::from(servers) * (1.0 - rho))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((mm1_sojourn(0.9) - 10.0).abs() < 1e-12);
        // Single server: M/M/N reduces to M/M/1.
        assert!((mmn_sojourn(1, 0.8) - 5.0).abs() < 1e-12);
        // ρ → 0: no waiting.
        assert!((supermarket_d2_sojourn(1e-9) - 1.0).abs() < 1e-6);
        // Erlang C for N=2, a=1 (ρ=0.5) is 1/3.
        assert!((erlang_c(2, 0.5) - 1.0 / 3.0).abs() < 1e-12);
        // Supermarket at ρ = 0.9: 1 + 0.81 + 0.9^6 + 0.9^14 + ... ≈ 2.6141.
        assert!((supermarket_d2_sojourn(0.9) - 2.6141).abs() < 1e-3);
    }
}
