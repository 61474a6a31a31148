//! Every bound a peer runs into, in one place (issue 14). A session either stays inside all
//! of them or ends with an error naming the peer and the bound; nothing a peer sends makes a
//! node loop, wait or allocate without one.
//!
//! The values are sized by what a router's configuration can hold (a few thousand files,
//! paths far below `PATH_MAX`), with room to spare, not by what the protocol could carry.
//! README.md, "Limits and guarantees", lists each with the test that proves it.

use std::time::Duration;

// ---- frames and messages -------------------------------------------------------------

/// Largest frame, header excluded: a chunk (256 KiB) or a message; 8 MiB leaves room for a
/// `Committed`/`Restored` naming every path of a big tree.
pub const MAX_FRAME: usize = 8 << 20;
/// Largest encoded manifest after decompression: 2^20 entries of ~500 bytes.
pub const MAX_MANIFEST: u64 = 512 << 20;
/// Longest free-text field (errors, node names): a log line, not a payload.
pub const MAX_TEXT: usize = 64 << 10;
/// Largest file ha-sync moves: bounds every allocation made on a peer's word (firewall
/// configuration and IP lists are megabytes; 1 GiB is far above any of them).
pub const MAX_FILE_SIZE: u64 = 1 << 30;

// ---- paths and manifest fields -------------------------------------------------------

/// Longest relative path: Linux `PATH_MAX` (4096, NUL included) minus the staging prefix
/// ([`MAX_STAGING_PREFIX`]) and a temp file's name beside the last component (~150), so a
/// staged path (and its temp file, and a rescan of it) always fits.
pub const MAX_PATH_LEN: usize = 3072;
/// Longest path component: Linux `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255;
/// Deepest path, in components: router configuration is rarely 10 deep; the bound keeps
/// every per-component walk (`openat` chains, `remove_all`) short.
pub const MAX_DEPTH: usize = 64;
/// Longest staging directory (absolute) a backup accepts: with [`MAX_PATH_LEN`] and a temp
/// name it stays under `PATH_MAX`.
pub const MAX_STAGING_PREFIX: usize = 768;
/// Most entries a manifest may have (a router holds thousands).
pub const MAX_ENTRIES: usize = 1 << 20;
/// Longest symlink target: `PATH_MAX`.
pub const MAX_LINK_TARGET: usize = 4096;
/// Most restore-list items: `sysupgrade -l` lists every kept file, hundreds to a few
/// thousand on a busy router; 64 Ki leaves a wide margin.
pub const MAX_LIST_ITEMS: usize = 64 << 10;
/// Largest restore list as staged (`tmp/restore_list`, one absolute path a line): 64 Ki
/// paths of 64 bytes; it is hashed and staged on every sync that changes it.
pub const MAX_RESTORE_LIST_BYTES: usize = 4 << 20;
/// Most `exclude_list` patterns (a UCI list option someone typed).
pub const MAX_EXCLUDES: usize = 1024;
/// Longest `exclude_list` pattern: a glob over one path, so `PATH_MAX`.
pub const MAX_EXCLUDE_LEN: usize = 4096;

// ---- the primary's side of a session -------------------------------------------------

/// Times a backup may ask again for a file that did not verify. The backup gives up after
/// this many refetches; the primary sends one file at most `1 + MAX_REFETCHES` times a
/// session (pushed or wanted) and answers at most `1 + MAX_REFETCHES` rounds of wants.
pub const MAX_REFETCHES: usize = 2;
/// Largest rsync signature in a want: what this backup makes for a `MAX_FILE_SIZE` basis
/// (32 Ki blocks of 12 bytes, ~384 KiB), rounded up.
pub const MAX_SIGNATURE: usize = 512 << 10;
/// Bytes of wants in one round beyond what the manifest accounts for (signatures of basis
/// copies larger than the new files they rebuild).
pub const WANT_ROUND_SLACK: u64 = 16 << 20;
/// Time every session may take, however small: connection set-up, the backup's commit
/// (a `syncfs`) and its restore hooks, which reload services.
pub const SESSION_BASE: Duration = Duration::from_secs(120);
/// Slowest rate a backup may take the payload at; below it the session's deadline passes.
/// A firewall pair's sync link is a LAN; 1 MiB/s is what a congested 10 Mbit/s one gives.
pub const MIN_THROUGHPUT: u64 = 1 << 20;

/// Largest payload (compressed, on the wire) accepted for a file the manifest says has
/// `size` bytes: zstd never grows data by more than ~1/128 + a frame header; an rsync delta
/// is the literal bytes plus a command per block. The slack covers a file that grew
/// between the primary's scan and its read (that sync records what it read).
pub fn max_payload(size: u64) -> u64 {
    size.saturating_mul(2)
        .saturating_add(64 << 10)
        .min(2 * MAX_FILE_SIZE)
}

/// Largest decompressed rsync delta that rebuilds a `size`-byte file: the literals (at
/// most the file) and one copy command (<= 17 bytes) per 64-byte block (the smallest
/// block a signature may have), plus a header.
pub fn max_rsync_delta(size: u64) -> u64 {
    size.saturating_add(size / 64 * 17).saturating_add(4096)
}

// Checked at build time: a staged path of the longest kind (prefix, '/', path, a temp
// name's extra bytes, NUL) fits PATH_MAX.
const _: () = assert!(MAX_STAGING_PREFIX + 1 + MAX_PATH_LEN + 150 < 4096);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta;

    #[test]
    fn the_largest_honest_signature_is_under_the_bound() {
        let blocks = MAX_FILE_SIZE.div_ceil(delta::block_size(MAX_FILE_SIZE) as u64);
        assert!(12 + blocks * 12 <= MAX_SIGNATURE as u64);
    }
}
