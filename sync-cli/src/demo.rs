//! `ha-sync demo`: a generated firewall-like tree synced between two temporary roots, then
//! a few edits synced again, with what moved and how fast.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use sync_core::runner::SystemRunner;
use sync_core::{local, sample};

pub fn run(scale: u64, dir: Option<&Path>) -> Result<()> {
    let tmp;
    let base = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::Builder::new().prefix("ha-sync-demo.").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let (a, b) = (base.join("primary"), base.join("backup"));
    let t = Instant::now();
    sample::write_router_config(&a, "fw-primary")?;
    sample::write_router_config(&b, "fw-backup")?;
    sample::generate(&a, scale).context("generating the sample tree")?;
    println!(
        "sample tree generated in {} ({:.0} ms)",
        a.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let step = |name: &str| -> Result<()> {
        let t = Instant::now();
        let s = local::sync_local(&a, &b, &SystemRunner, &mut local::staging_only)?;
        println!("{name:>9}: {}", crate::summary(&s, t.elapsed()));
        Ok(())
    };
    step("full")?;
    step("nochange")?;
    for m in ["edit", "bigedit", "delete", "add", "touch"] {
        sample::mutate(&a, m)?;
        step(m)?;
    }
    println!("staging tree: {}", local::staging_dir(&b).display());
    Ok(())
}
