//! Faster memcpy/memmove/memcmp/bcmp for the static x86_64 musl binary (`src/mem.c` says
//! why). On x86_64 the functions are always built under `ha_` names, which the tests compare
//! with Rust's own; the musl build also gets them under the C library's names, in the same
//! archive, which the linker reads before libc.a.

fn main() {
    println!("cargo:rerun-if-changed=src/mem.c");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if arch != "x86_64" {
        return;
    }
    let build = |libc_names: bool| {
        let mut b = cc::Build::new();
        b.file("src/mem.c")
            .opt_level(2)
            .flag("-fno-builtin")
            .flag_if_supported("-fno-tree-loop-distribute-patterns")
            .warnings(true);
        if libc_names {
            b.define("HA_MEM_LIBC", None);
        }
        b
    };
    let mut lib = build(false);
    if env == "musl" {
        // The C library's names in the same archive: rustc puts it ahead of libc.a, every
        // reference is resolved here, and libc's members for these names are never pulled.
        let dir = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("libc");
        std::fs::create_dir_all(&dir).expect("mkdir OUT_DIR/libc");
        lib.objects(build(true).out_dir(&dir).compile_intermediates());
    }
    lib.compile("ha_mem");
    println!("cargo:rustc-cfg=ha_mem");
}
