//! Replays every input saved under `fuzz/regressions/<target>/`, so a crash the fuzzer
//! found once stays a test.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        f(&std::fs::read(e.path()).expect("read regression input"));
        n += 1;
    }
    n
}

#[test]
fn fuzz_regressions_replay_without_panicking() {
    let n = replay("frames", sync_core::wire::fuzz_frames)
        + replay("manifest", sync_core::manifest::fuzz_decode)
        + replay("delta", sync_core::delta::fuzz_decode)
        + replay("uci", sync_core::uci::fuzz_parse);
    // Also a few fixed nasty inputs, so this test checks something on a fresh clone.
    let fixed: [&[u8]; 5] = [
        b"",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x00",
        b"config x\n\toption 'a",
        &[0x06, 0x05, b'.', b'.', b'/', b'x', 0],
    ];
    for input in fixed {
        sync_core::wire::fuzz_frames(input);
        sync_core::manifest::fuzz_decode(input);
        sync_core::delta::fuzz_decode(input);
        sync_core::uci::fuzz_parse(input);
    }
    eprintln!("replayed {n} saved fuzz inputs");
}
