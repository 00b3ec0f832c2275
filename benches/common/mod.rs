//! What several benches share: generated data and flushing the page cache's dirty pages.

#![allow(dead_code)]

use std::process::Command;

/// `len` bytes that do not compress (xorshift), different per `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sync() {
    let _ = Command::new("sync").status();
}
