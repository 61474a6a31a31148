//! The tests of `mem.c` (the musl build's memcpy, memmove, memcmp, bcmp), under their `ha_`
//! names: every size up to past the block loop, every alignment of both sides, every overlap
//! distance in both directions, and large copies, against Rust's own copy and comparison.

use std::ffi::c_void;

extern "C" {
    fn ha_memcpy(d: *mut c_void, s: *const c_void, n: usize) -> *mut c_void;
    fn ha_memmove(d: *mut c_void, s: *const c_void, n: usize) -> *mut c_void;
    fn ha_memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32;
    fn ha_bcmp(a: *const c_void, b: *const c_void, n: usize) -> i32;
}

/// Deterministic bytes, no two neighbours alike.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

const SIZES: &[usize] = &[4095, 4096, 4097, 10_000, 70_001];

fn sizes() -> impl Iterator<Item = usize> {
    (0..=200).chain(SIZES.iter().copied())
}

#[test]
fn memcpy_copies_every_size_and_alignment_and_nothing_around_it() {
    for n in sizes() {
        let align = if n > 200 { 0..3 } else { 0..17 };
        for so in align.clone() {
            for dof in align.clone() {
                let src = pattern(n + 32, 7);
                let mut dst = vec![0xAAu8; n + 32];
                // SAFETY: both ranges lie inside their buffers and do not overlap.
                let r = unsafe {
                    ha_memcpy(
                        dst.as_mut_ptr().add(dof).cast(),
                        src.as_ptr().add(so).cast(),
                        n,
                    )
                };
                assert_eq!(r, unsafe { dst.as_mut_ptr().add(dof) }.cast());
                assert_eq!(
                    &dst[dof..dof + n],
                    &src[so..so + n],
                    "n={n} so={so} do={dof}"
                );
                assert!(dst[..dof].iter().all(|&b| b == 0xAA), "before, n={n}");
                assert!(dst[dof + n..].iter().all(|&b| b == 0xAA), "after, n={n}");
            }
        }
    }
}

#[test]
fn memmove_is_right_for_every_overlap_in_both_directions() {
    for n in sizes() {
        let shifts: Vec<usize> = if n > 200 {
            vec![1, 15, 16, 17, 4095, n / 2]
        } else {
            (0..=n + 1).collect()
        };
        for &k in &shifts {
            let base = pattern(n + k + 16, 3);
            // Up: dst = src + k.
            let mut got = base.clone();
            let mut want = base.clone();
            want.copy_within(0..n, k);
            // SAFETY: [0, n) and [k, k + n) lie inside the buffer.
            unsafe { ha_memmove(got.as_mut_ptr().add(k).cast(), got.as_ptr().cast(), n) };
            assert_eq!(got, want, "up n={n} k={k}");
            // Down: dst = src - k.
            let mut got = base.clone();
            let mut want = base.clone();
            want.copy_within(k..k + n, 0);
            // SAFETY: as above.
            unsafe { ha_memmove(got.as_mut_ptr().cast(), got.as_ptr().add(k).cast(), n) };
            assert_eq!(got, want, "down n={n} k={k}");
        }
    }
}

#[test]
fn memcmp_and_bcmp_order_like_slices() {
    let sign = |o: std::cmp::Ordering| o as i32;
    for n in sizes().filter(|&n| n <= 300 || n == 4097) {
        let a = pattern(n, 11);
        // SAFETY: both buffers hold n bytes.
        let cmp = |x: &[u8], y: &[u8]| unsafe {
            let m = ha_memcmp(x.as_ptr().cast(), y.as_ptr().cast(), n).signum();
            let b = ha_bcmp(x.as_ptr().cast(), y.as_ptr().cast(), n);
            assert_eq!(b == 0, m == 0, "bcmp and memcmp agree, n={n}");
            m
        };
        assert_eq!(cmp(&a, &a.clone()), 0);
        let positions: Vec<usize> = if n > 64 {
            vec![0, 1, 7, 8, 9, n / 2, n - 9, n - 8, n - 1]
        } else {
            (0..n).collect()
        };
        for &i in &positions {
            for delta in [1u8, 0x80, 0xFF] {
                let mut b = a.clone();
                b[i] = b[i].wrapping_add(delta);
                // A later difference must not outweigh an earlier one.
                if i + 1 < n {
                    b[n - 1] = a[n - 1].wrapping_sub(delta);
                    if i + 1 == n - 1 {
                        b[n - 1] = a[n - 1];
                    }
                }
                assert_eq!(cmp(&a, &b), sign(a.cmp(&b)), "n={n} i={i} delta={delta}");
                assert_eq!(cmp(&b, &a), sign(b.cmp(&a)), "n={n} i={i} delta={delta}");
            }
        }
    }
}
