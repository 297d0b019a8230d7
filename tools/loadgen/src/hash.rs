//! In-memory SHA-256 throughput of the `sha2` crate, built exactly as the upload
//! tools build it (release profile), plus whether the CPU offers SHA extensions.
//!
//! `sha2` picks its SHA-NI backend at run time; a figure well above the portable
//! backend's few hundred MB/s shows the extensions are in use.

use std::time::Instant;

use sha2::{Digest, Sha256};

/// Options of `loadgen sha256`.
#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// MiB to hash (from one 1 MiB buffer, so memory stays small).
    #[arg(long, default_value_t = 256)]
    mib: usize,
}

/// Hashes and returns `mib= secs= mb_per_s= cpu_sha= digest=`.
pub fn run(args: &HashArgs) -> String {
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let start = Instant::now();
    let mut hasher = Sha256::new();
    for _ in 0..args.mib {
        hasher.update(&block);
    }
    let digest = hasher.finalize();
    let secs = start.elapsed().as_secs_f64();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "mib={} secs={secs:.4} mb_per_s={:.1} cpu_sha={} digest={hex}",
        args.mib,
        (args.mib as f64 * 1_048_576.0) / secs / 1e6,
        cpu_has_sha(),
    )
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn cpu_has_sha() -> bool {
    std::is_x86_feature_detected!("sha")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn cpu_has_sha() -> bool {
    false
}
