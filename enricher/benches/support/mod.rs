//! What the enricher benchmarks share: a deterministic generator and argument parsing.

/// splitmix64: small and deterministic, so every run measures the same data for a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    #[allow(dead_code)]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    #[allow(dead_code)]
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..hi`.
    #[allow(dead_code)]
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.unit() * (hi - lo) as f64) as i64
    }

    /// Exponentially distributed with mean `mean`.
    #[allow(dead_code)]
    pub fn exp(&mut self, mean: i64) -> i64 {
        (-(1.0 - self.unit()).ln() * mean as f64) as i64
    }
}

/// The value after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: i64) -> i64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether this run is `cargo test` exercising the benchmark (cargo passes `--bench` only
/// under `cargo bench`): then a small configuration is enough.
pub fn smoke_test() -> bool {
    !std::env::args().any(|a| a == "--bench")
}
