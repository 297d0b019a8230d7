//! In-memory hashing throughput of each digest implementation in `proto::digest`,
//! built exactly as the upload tools build it (release profile), plus whether the
//! CPU offers SHA extensions.
//!
//! On a CPU with SHA extensions `sha2` runs its hardware path; `portable` is what
//! `sha2` runs on a CPU without them, and `ring` what `proto` picks there instead.

use std::time::Instant;

use proto::digest::{cpu_has_sha_extensions, Algorithm, Hasher, Sha256Backend};

/// Which implementation to time.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Implementation {
    /// SHA-256, `sha2` crate (SHA extensions when present).
    Sha2,
    /// SHA-256, `ring::digest`.
    Ring,
    /// SHA-256, portable Rust code (what `sha2` runs without SHA extensions).
    Portable,
    /// SHA-256 on the backend `proto` picks for this CPU (or `SOCKCHAT_SHA256`).
    Auto,
    /// BLAKE3, one thread.
    Blake3,
}

/// Options of `loadgen hash`.
#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// The implementation to time.
    #[arg(long = "impl", value_enum, default_value = "auto")]
    implementation: Implementation,
    /// MiB to hash (from one 1 MiB buffer, so memory stays small).
    #[arg(long, default_value_t = 256)]
    mib: usize,
}

/// Hashes and returns `impl= mib= secs= mb_per_s= cpu_sha= digest=`.
pub fn run(args: &HashArgs) -> String {
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (name, mut hasher) = match args.implementation {
        Implementation::Sha2 => ("sha2", Hasher::sha256_with(Sha256Backend::Sha2)),
        Implementation::Ring => ("ring", Hasher::sha256_with(Sha256Backend::Ring)),
        Implementation::Portable => ("portable", Hasher::sha256_with(Sha256Backend::Portable)),
        Implementation::Auto => (
            Sha256Backend::active().name(),
            Hasher::new(Algorithm::Sha256),
        ),
        Implementation::Blake3 => ("blake3", Hasher::new(Algorithm::Blake3)),
    };
    let start = Instant::now();
    for _ in 0..args.mib {
        hasher.update(&block);
    }
    let digest = hasher.finalize();
    let secs = start.elapsed().as_secs_f64();
    format!(
        "impl={name} mib={} secs={secs:.4} mb_per_s={:.1} cpu_sha={} digest={digest}",
        args.mib,
        (args.mib as f64 * 1_048_576.0) / secs / 1e6,
        cpu_has_sha_extensions(),
    )
}
