//! Limits per top-level operation.

use std::time::Duration;

/// Per-operation limits of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub wall_time: Duration,
    pub heap_bytes: usize,
    pub stack_bytes: usize,
    /// Largest result and largest total `log` output, in bytes of JSON/text.
    pub output_bytes: usize,
    /// Deepest chain of nested sends.
    pub max_depth: usize,
    /// Compiled methods kept per script thread.
    pub cache_capacity: usize,
    /// What one top-level operation may write (bytes, slot size, objects created).
    pub budget: crate::world::Budget,
    /// Runs of one operation whose reads went stale before it gives up (all within
    /// `wall_time`).
    pub max_attempts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_time: Duration::from_secs(2),
            heap_bytes: 64 << 20,
            stack_bytes: 512 << 10,
            output_bytes: 1 << 20,
            max_depth: 100,
            cache_capacity: 4096,
            budget: crate::world::Budget::default(),
            max_attempts: 32,
        }
    }
}
