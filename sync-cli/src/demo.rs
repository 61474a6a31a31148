//! `ha-sync demo`: a generated firewall-like tree synced over SSH on loopback to a real
//! backup agent (generated keys, pinned host key), then a few edits synced again, with what
//! moved and how fast.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use sync_agent::agent::{self, NowOptions};
use sync_agent::backup;
use sync_agent::transport::{self, ClientConfig};
use sync_core::node::Node;
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
    let (a, b, keys) = (base.join("primary"), base.join("backup"), base.join("keys"));
    let t = Instant::now();
    sample::write_router_config(&a, "fw-primary")?;
    sample::write_router_config(&b, "fw-backup")?;
    // The backup is an OpenWrt root: its hotplug-call is what NOTIFY_SYNC runs (recorded here).
    std::fs::create_dir_all(b.join("sbin"))?;
    std::fs::write(b.join("sbin/hotplug-call"), "#!/bin/sh\n")?;
    sample::generate(&a, scale).context("generating the sample tree")?;
    println!(
        "sample tree generated in {} ({:.0} ms)",
        a.display(),
        t.elapsed().as_secs_f64() * 1e3
    );

    std::fs::create_dir_all(&keys)?;
    let (id, hk, ak, kh) = (
        keys.join("id_ed25519"),
        keys.join("host_key"),
        keys.join("authorized_keys"),
        keys.join("known_hosts"),
    );
    if !id.exists() {
        transport::generate_keypair(&id)?;
    }
    std::fs::copy(keys.join("id_ed25519.pub"), &ak)?;
    let host = transport::load_or_create_host_key(&hk)?;

    let runner = Arc::new(sync_core::runner::RecordingRunner::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // The backup restores into its root's live tree with a recording runner: the demo
        // shows the commands a router would run (reloads, hotplug-call) without running them
        // on this machine.
        let opts = backup::Options {
            listen: "127.0.0.1:0".parse()?,
            host_key: hk.clone(),
            authorized_keys: ak.clone(),
            staging_only: false,
            runner: runner.clone(),
        };
        let server = backup::bind(&Node::new(&b), opts).await?;
        let addr = server.local_addr()?;
        let _ = std::fs::remove_file(&kh);
        transport::pin_known_host(&kh, "127.0.0.1", addr.port(), host.public_key())?;
        tokio::spawn(server.run());
        println!(
            "backup agent on {addr} (SSH, key-only; host key pinned in {})",
            kh.display()
        );
        let step = |name: &'static str| {
            let runner = runner.clone();
            let client = ClientConfig::new(addr.to_string(), id.clone(), kh.clone());
            let a = a.clone();
            async move {
                let t = Instant::now();
                let (prep, rep) = agent::now(NowOptions {
                    root: a,
                    client,
                    runner: Arc::new(SystemRunner),
                    progress: Box::new(|_, _| {}),
                    force: false,
                })
                .await?;
                let s = local::LocalSync {
                    prepared: prep,
                    primary: rep,
                    backup: Default::default(),
                };
                println!("{name:>9}: {}", crate::summary(&s, t.elapsed()));
                if let Some(r) = &s.primary.restore {
                    // Program and arguments; the environment (ACTION=NOTIFY_SYNC, the list of
                    // changed paths, the generation) would fill the line.
                    let cmds: Vec<String> = runner
                        .calls()
                        .iter()
                        .map(|c| format!("{} {}", c.program, c.args.join(" ")))
                        .collect();
                    runner.clear();
                    println!(
                        "           restored on the backup: {} live paths changed{}{}",
                        r.changed.len(),
                        r.refused
                            .as_ref()
                            .map(|w| format!(", refused: {w}"))
                            .unwrap_or_default(),
                        if cmds.is_empty() {
                            String::new()
                        } else {
                            format!("; would run: {}", cmds.join(" | "))
                        }
                    );
                }
                anyhow::Ok(())
            }
        };
        step("full").await?;
        step("nochange").await?;
        for m in ["edit", "bigedit", "delete", "add", "touch"] {
            sample::mutate(&a, m)?;
            step(m).await?;
        }
        anyhow::Ok(())
    })?;
    println!("staging tree: {}", Node::new(&b).staging_dir().display());
    Ok(())
}
