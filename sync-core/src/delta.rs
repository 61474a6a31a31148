//! How file content travels: whole, as an rsync delta, or as a zstd patch.
//!
//! Every payload is a zstd frame. The three methods sit behind one small trait, `Codec`,
//! so a new one only adds a variant of `Encoding` and an impl:
//! - `Whole`: the file compressed on its own. First sync, small files, no basis anywhere.
//! - `Rsync`: the receiver sends a fast_rsync signature of the copy it has, the sender
//!   answers with a delta. Costs a round trip and the signature's bytes upstream.
//! - `Patch`: the sender still holds the exact version the receiver has (its basis store,
//!   keyed by blake3) and compresses the new file with that version as zstd reference
//!   prefix. No round trip, no signature, and the smallest payload: only what changed.
//!
//! Whatever the method, the receiver checks the rebuilt file's blake3 against the manifest
//! before it is written; a mismatch is refetched whole (fast_rsync uses MD4, and a basis may
//! have changed underneath).

use crate::manifest::Hash;
use serde::{Deserialize, Serialize};
use zstd::zstd_safe::{self, CParameter, DParameter};

pub use crate::limits::MAX_FILE_SIZE;
/// Files up to this size always go whole: a delta's overhead is not worth it.
pub const WHOLE_MAX: u64 = 8 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    Whole,
    Rsync,
    /// zstd with the receiver's version (blake3 `base`) as reference prefix.
    Patch {
        base: Hash,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("zstd: {0}")]
    Zstd(&'static str),
    #[error("invalid rsync signature: {0}")]
    BadSignature(String),
    #[error("rsync delta: {0}")]
    Rsync(String),
    #[error("payload decodes to more than the announced {0} bytes")]
    TooLarge(u64),
    #[error("{0} needs the receiver's copy, and there is none")]
    NoBasis(&'static str),
}

fn zerr(code: usize) -> DeltaError {
    DeltaError::Zstd(zstd_safe::get_error_name(code))
}

/// One way of encoding a file for a receiver that has `basis` (its current copy).
pub trait Codec {
    /// Sender: `new` as payload. `hint` is what the receiver sent (a signature) or the
    /// basis the sender holds, depending on the method.
    fn encode(&self, new: &[u8], hint: Option<&[u8]>) -> Result<Vec<u8>, DeltaError>;
    /// Receiver: the file back, at most `size` bytes.
    fn decode(
        &self,
        payload: &[u8],
        basis: Option<&[u8]>,
        size: u64,
    ) -> Result<Vec<u8>, DeltaError>;
}

pub fn codec(e: Encoding) -> &'static dyn Codec {
    match e {
        Encoding::Whole => &WholeCodec,
        Encoding::Rsync => &RsyncCodec,
        Encoding::Patch { .. } => &PatchCodec,
    }
}

/// Level by size: zstd's default below 256 KiB, level 1 above.
/// Measured on firewall trees (CRATES.md, bench/): level 1 is as small as 3-4 on big text
/// such as IP lists and twice as fast, which is what a full sync needs.
fn level_for(len: usize) -> i32 {
    match len {
        0..=0x4_0000 => 3,
        _ => 1,
    }
}

thread_local! {
    // Contexts are costly to create (a few % of a full sync when made per file): one per
    // thread, reused.
    static CCTX: std::cell::RefCell<zstd_safe::CCtx<'static>> = std::cell::RefCell::new(zstd_safe::CCtx::create());
    static DCTX: std::cell::RefCell<zstd_safe::DCtx<'static>> = std::cell::RefCell::new(zstd_safe::DCtx::create());
}

/// Window log that covers `n` bytes (zstd's window must span basis + new for a patch).
fn window_log(n: usize) -> u32 {
    let mut w = 10;
    while (1usize << w) < n && w < 30 {
        w += 1;
    }
    w
}

pub fn compress(data: &[u8]) -> Vec<u8> {
    CCTX.with_borrow_mut(|c| {
        // Parameters are sticky on a reused context: reset them all each time.
        let _ = c.reset(zstd_safe::ResetDirective::SessionAndParameters);
        let _ = c.set_parameter(CParameter::CompressionLevel(level_for(data.len())));
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        // In-memory compression into a buffer of compress_bound cannot fail.
        c.compress2(&mut out, data)
            .expect("zstd compress into memory");
        out
    })
}

/// Decompresses a payload that must be exactly `size` bytes.
pub fn decompress(payload: &[u8], size: u64) -> Result<Vec<u8>, DeltaError> {
    if size > MAX_FILE_SIZE {
        return Err(DeltaError::TooLarge(size));
    }
    DCTX.with_borrow_mut(|d| {
        let _ = d.reset(zstd_safe::ResetDirective::SessionAndParameters);
        d.set_parameter(DParameter::WindowLogMax(window_log(size as usize).max(27)))
            .map_err(zerr)?;
        decompress_with(d, payload, size)
    })
}

/// Decompresses a payload of at most `limit` bytes (any length up to it).
fn decompress_at_most(payload: &[u8], limit: u64) -> Result<Vec<u8>, DeltaError> {
    DCTX.with_borrow_mut(|d| {
        let _ = d.reset(zstd_safe::ResetDirective::SessionAndParameters);
        d.set_parameter(DParameter::WindowLogMax(window_log(limit as usize).max(27)))
            .map_err(zerr)?;
        let mut out: Vec<u8> = Vec::with_capacity(limit as usize + 1);
        d.decompress(&mut out, payload).map_err(|c| {
            if zstd_safe::get_error_name(c).contains("Destination buffer is too small") {
                DeltaError::TooLarge(limit)
            } else {
                zerr(c)
            }
        })?;
        if out.len() as u64 > limit {
            return Err(DeltaError::TooLarge(limit));
        }
        Ok(out)
    })
}

fn decompress_with(
    dctx: &mut zstd_safe::DCtx<'_>,
    payload: &[u8],
    size: u64,
) -> Result<Vec<u8>, DeltaError> {
    // Capacity one past the size: a frame that fills it is longer than announced.
    let mut out: Vec<u8> = Vec::with_capacity(size as usize + 1);
    dctx.decompress(&mut out, payload).map_err(|c| {
        if zstd_safe::get_error_name(c).contains("Destination buffer is too small") {
            DeltaError::TooLarge(size)
        } else {
            zerr(c)
        }
    })?;
    if out.len() as u64 != size {
        return Err(DeltaError::TooLarge(size));
    }
    Ok(out)
}

pub struct WholeCodec;

impl Codec for WholeCodec {
    fn encode(&self, new: &[u8], _hint: Option<&[u8]>) -> Result<Vec<u8>, DeltaError> {
        Ok(compress(new))
    }

    fn decode(
        &self,
        payload: &[u8],
        _basis: Option<&[u8]>,
        size: u64,
    ) -> Result<Vec<u8>, DeltaError> {
        decompress(payload, size)
    }
}

pub struct RsyncCodec;

/// Signature block size for a basis of `len` bytes: about sqrt(len) as rsync does, so the
/// signature stays small on big files, never under 512 (fine-grained, see CRATES.md).
pub fn block_size(len: u64) -> u32 {
    let s = (len as f64).sqrt() as u32;
    s.clamp(512, 1 << 16).next_power_of_two()
}

/// Receiver: the signature of its copy, sent with the request for a delta.
pub fn signature(basis: &[u8]) -> Vec<u8> {
    let opts = fast_rsync::SignatureOptions {
        block_size: block_size(basis.len() as u64),
        crypto_hash_size: 8,
    };
    fast_rsync::Signature::calculate(basis, opts).into_serialized()
}

/// Checks a peer's signature before fast_rsync sees it: it panics on block size 0.
fn parse_signature(sig: &[u8]) -> Result<fast_rsync::Signature, DeltaError> {
    if sig.len() < 12 {
        return Err(DeltaError::BadSignature("shorter than its header".into()));
    }
    let block = u32::from_be_bytes([sig[4], sig[5], sig[6], sig[7]]);
    let hash = u32::from_be_bytes([sig[8], sig[9], sig[10], sig[11]]);
    if !(64..=1 << 20).contains(&block) || !(4..=16).contains(&hash) {
        return Err(DeltaError::BadSignature(format!(
            "block size {block}, hash size {hash}"
        )));
    }
    fast_rsync::Signature::deserialize(sig.to_vec())
        .map_err(|e| DeltaError::BadSignature(e.to_string()))
}

impl Codec for RsyncCodec {
    fn encode(&self, new: &[u8], hint: Option<&[u8]>) -> Result<Vec<u8>, DeltaError> {
        let sig = parse_signature(hint.ok_or(DeltaError::NoBasis("an rsync delta"))?)?;
        let mut delta = Vec::new();
        fast_rsync::diff(&sig.index(), new, &mut delta)
            .map_err(|e| DeltaError::Rsync(e.to_string()))?;
        Ok(compress(&delta))
    }

    fn decode(
        &self,
        payload: &[u8],
        basis: Option<&[u8]>,
        size: u64,
    ) -> Result<Vec<u8>, DeltaError> {
        let basis = basis.ok_or(DeltaError::NoBasis("an rsync delta"))?;
        if size > MAX_FILE_SIZE {
            return Err(DeltaError::TooLarge(size));
        }
        // A delta is at most a little over the file it rebuilds: decoded within that, so a
        // small payload cannot expand past the size it declares.
        let limit = crate::limits::max_rsync_delta(size);
        let delta = decompress_at_most(payload, limit).map_err(|e| match e {
            DeltaError::TooLarge(_) => DeltaError::Rsync(format!(
                "delta expands past {limit} bytes, more than a {size}-byte file needs"
            )),
            e => e,
        })?;
        let mut out = Vec::with_capacity(size as usize);
        fast_rsync::apply_limited(basis, &delta, &mut out, size as usize)
            .map_err(|e| DeltaError::Rsync(e.to_string()))?;
        if out.len() as u64 != size {
            return Err(DeltaError::TooLarge(size));
        }
        Ok(out)
    }
}

pub struct PatchCodec;

impl Codec for PatchCodec {
    fn encode(&self, new: &[u8], hint: Option<&[u8]>) -> Result<Vec<u8>, DeltaError> {
        let basis = hint.ok_or(DeltaError::NoBasis("a zstd patch"))?;
        let mut cctx = zstd_safe::CCtx::create();
        let wlog = window_log(basis.len() + new.len());
        cctx.set_parameter(CParameter::CompressionLevel(level_for(new.len())))
            .map_err(zerr)?;
        cctx.set_parameter(CParameter::WindowLog(wlog))
            .map_err(zerr)?;
        // Level 1's small hash table alone misses most of a big reference; long-distance
        // matching finds it (a 2.6 MB list: ~40 KB patch with it, ~950 KB without).
        if new.len() > 256 << 10 {
            cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
                .map_err(zerr)?;
        }
        cctx.ref_prefix(basis).map_err(zerr)?;
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(new.len()));
        cctx.compress2(&mut out, new).map_err(zerr)?;
        Ok(out)
    }

    fn decode(
        &self,
        payload: &[u8],
        basis: Option<&[u8]>,
        size: u64,
    ) -> Result<Vec<u8>, DeltaError> {
        let basis = basis.ok_or(DeltaError::NoBasis("a zstd patch"))?;
        if size > MAX_FILE_SIZE {
            return Err(DeltaError::TooLarge(size));
        }
        let mut dctx = zstd_safe::DCtx::create();
        let wlog = window_log(basis.len() + size as usize).max(27);
        dctx.set_parameter(DParameter::WindowLogMax(wlog))
            .map_err(zerr)?;
        dctx.ref_prefix(basis).map_err(zerr)?;
        decompress_with(&mut dctx, payload, size)
    }
}

/// Fuzz entry: decoding arbitrary payloads against a basis never panics.
pub fn fuzz_decode(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let (head, rest) = data.split_at(3);
    let split = (head[1] as usize * 256 + head[2] as usize).min(rest.len());
    let (basis, payload) = rest.split_at(split);
    let enc = match head[0] % 3 {
        0 => Encoding::Whole,
        1 => Encoding::Rsync,
        _ => Encoding::Patch {
            base: Hash::default(),
        },
    };
    let _ = codec(enc).decode(payload, Some(basis), 1 << 16);
    // A peer's signature too: must be refused cleanly, never panic.
    let _ = RsyncCodec.encode(basis, Some(payload));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seed: u64, lines: usize) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::new();
        for _ in 0..lines {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(
                format!(
                    "{}.{}.{}.{}/32\n",
                    x >> 56,
                    (x >> 48) & 255,
                    (x >> 40) & 255,
                    (x >> 32) & 255
                )
                .as_bytes(),
            );
        }
        out
    }

    fn edited(base: &[u8]) -> Vec<u8> {
        let mut new = base.to_vec();
        for i in (0..new.len()).step_by(997) {
            new[i] = b'9';
        }
        new.extend_from_slice(b"10.0.0.0/8\n");
        new
    }

    #[test]
    fn each_codec_round_trips() {
        let base = text(1, 20_000);
        let new = edited(&base);
        let sig = signature(&base);
        for (enc, hint) in [
            (Encoding::Whole, None),
            (Encoding::Rsync, Some(sig.as_slice())),
            (
                Encoding::Patch {
                    base: Hash::of(&base),
                },
                Some(base.as_slice()),
            ),
        ] {
            let payload = codec(enc).encode(&new, hint).unwrap();
            let back = codec(enc)
                .decode(&payload, Some(&base), new.len() as u64)
                .unwrap();
            assert_eq!(back, new, "{enc:?}");
        }
    }

    #[test]
    fn patch_is_much_smaller_than_whole() {
        let base = text(2, 50_000);
        let mut new = base.clone();
        new.extend_from_slice(&text(3, 100));
        let whole = codec(Encoding::Whole).encode(&new, None).unwrap();
        let patch = codec(Encoding::Patch {
            base: Hash::of(&base),
        })
        .encode(&new, Some(&base))
        .unwrap();
        assert!(
            patch.len() * 20 < whole.len(),
            "patch {} whole {}",
            patch.len(),
            whole.len()
        );
    }

    #[test]
    fn decoding_refuses_more_than_announced() {
        let data = vec![7u8; 10_000];
        let payload = compress(&data);
        assert!(matches!(
            decompress(&payload, 9_999),
            Err(DeltaError::TooLarge(9_999))
        ));
        assert!(matches!(
            decompress(&payload, 10_001),
            Err(DeltaError::TooLarge(_))
        ));
        assert!(decompress(b"garbage", 10).is_err());
        assert!(matches!(
            decompress(&payload, MAX_FILE_SIZE + 1),
            Err(DeltaError::TooLarge(_))
        ));
    }

    /// Issue 14, finding 4: a small rsync payload that expands far past the size it declares
    /// is refused by the bound, before fast_rsync sees it (no blow-up needed to show it).
    #[test]
    fn an_rsync_delta_is_decoded_within_the_declared_size() {
        let basis = text(6, 1_000);
        let new = edited(&basis);
        let payload = RsyncCodec.encode(&new, Some(&signature(&basis))).unwrap();
        let ok = RsyncCodec.decode(&payload, Some(&basis), new.len() as u64);
        assert_eq!(ok.unwrap(), new);
        // 4 MiB of zeros compress to a few hundred bytes: declared 1000 bytes, refused.
        let bomb = compress(&vec![0u8; 4 << 20]);
        assert!(bomb.len() < 4096);
        let err = RsyncCodec.decode(&bomb, Some(&basis), 1000).unwrap_err();
        assert!(err.to_string().contains("expands past"), "{err}");
        assert!(matches!(
            RsyncCodec.decode(&bomb, Some(&basis), MAX_FILE_SIZE + 1),
            Err(DeltaError::TooLarge(_))
        ));
    }

    #[test]
    fn hostile_signatures_are_refused_not_panicked_on() {
        let mut sig = signature(b"hello world");
        sig[4..8].copy_from_slice(&0u32.to_be_bytes()); // block size 0 panics fast_rsync
        assert!(matches!(
            RsyncCodec.encode(b"x", Some(&sig)),
            Err(DeltaError::BadSignature(_))
        ));
        assert!(RsyncCodec.encode(b"x", Some(b"short")).is_err());
        assert!(RsyncCodec.encode(b"x", None).is_err());
    }

    #[test]
    fn wrong_basis_gives_an_error_or_other_bytes_never_a_panic() {
        let base = text(4, 5_000);
        let new = edited(&base);
        let payload = PatchCodec.encode(&new, Some(&base)).unwrap();
        let other = text(5, 5_000);
        if let Ok(out) = PatchCodec.decode(&payload, Some(&other), new.len() as u64) {
            assert_ne!(Hash::of(&out), Hash::of(&new));
        }
    }
}
