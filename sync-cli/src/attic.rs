//! `ha-sync attic`: the live versions restores replaced or deleted, and putting one back.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use sync_core::attic::{Attic, Kept, KeptKind};
use sync_core::node::Node;
use sync_core::path::RelPath;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AtticArgs {
    #[command(subcommand)]
    cmd: Option<AtticCmd>,
    /// List only the versions of this path (`/etc/config/firewall`).
    path: Option<String>,
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AtticCmd {
    /// Put a kept version of PATH back (the newest, or the newest GENERATION replaced, a prefix
    /// of its hex being enough); what live holds there now is kept first.
    Restore {
        path: String,
        generation: Option<String>,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

fn router_path(p: &str) -> Result<RelPath> {
    RelPath::from_abs(p)
        .or_else(|_| RelPath::new(p))
        .with_context(|| format!("{p}: not a router path"))
}

pub fn run(a: AtticArgs) -> Result<()> {
    match a.cmd {
        Some(AtticCmd::Restore {
            path,
            generation,
            root,
        }) => {
            let node = Node::new(&root);
            let rel = router_path(&path)?;
            let k = Attic::new(&node).restore(&node, &rel, generation.as_deref())?;
            println!(
                "{} is back as it was before generation {} ({})",
                rel.to_abs(),
                short(&k.generation),
                describe(&k)
            );
            Ok(())
        }
        None => {
            let node = Node::new(&a.root);
            let rel = a.path.as_deref().map(router_path).transpose()?;
            let kept = Attic::new(&node).list(rel.as_ref())?;
            let mut out = std::io::stdout().lock();
            if a.json {
                serde_json::to_writer_pretty(&mut out, &kept)?;
                writeln!(out)?;
                return Ok(());
            }
            if kept.is_empty() {
                writeln!(out, "the attic is empty")?;
            }
            for k in kept.iter().rev() {
                writeln!(
                    out,
                    "{:>5}  {}  gen {}  {:<7}  /{}  {}",
                    k.seq,
                    sync_agent::status::format_time(k.time),
                    short(&k.generation),
                    format!("{:?}", k.reason).to_lowercase(),
                    k.path,
                    describe(k)
                )?;
            }
            Ok(())
        }
    }
}

fn short(g: &str) -> &str {
    &g[..g.len().min(12)]
}

fn describe(k: &Kept) -> String {
    match &k.kind {
        KeptKind::File { size } => format!("{size} bytes, mode {:o}", k.mode & 0o7777),
        KeptKind::Symlink { target } => format!("symlink to {target}"),
    }
}

#[derive(Args)]
pub struct ResolveArgs {
    /// The router path in conflict (`/etc/config/firewall`).
    path: String,
    /// Whose version stays: `primary` or `backup`.
    #[arg(long, value_parser = ["primary", "backup"])]
    keep: String,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

/// `ha-sync resolve PATH --keep primary|backup`.
pub fn resolve(a: ResolveArgs) -> Result<()> {
    let node = Node::new(&a.root);
    let rel = router_path(&a.path)?;
    let keep_primary = a.keep == "primary";
    let n = restore_hooks::authority::resolve(&node, &rel, keep_primary)
        .with_context(|| format!("resolving {}", rel.to_abs()))?;
    if n == 0 {
        anyhow::bail!(
            "{}: no conflict recorded (ha-sync status lists them)",
            rel.to_abs()
        );
    }
    let left = restore_hooks::authority::conflicts(&node).len();
    if left == 0 {
        let cfg = sync_agent::alerts::AlertConfig::load(node.root());
        sync_agent::alerts::record(
            node.root(),
            &sync_core::runner::SystemRunner,
            cfg.command.as_deref(),
            sync_agent::alerts::Alert::Conflict,
            false,
            "every failback conflict is resolved",
        )
        .context("clearing the conflict alert")?;
    }
    println!(
        "{}: {n} conflict(s) settled, the {} version kept; {left} left",
        rel.to_abs(),
        a.keep
    );
    Ok(())
}
