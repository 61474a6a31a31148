//! The one door to external commands (sysupgrade, hotplug-call, init scripts, ip, ...).
//!
//! Everything that would run a program takes a `&dyn Runner`, so the same code runs a real
//! router (`SystemRunner`) and a test on a temporary root (`RecordingRunner`).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

/// A command to run: program, arguments and extra environment (added to the inherited one
/// unless `clear_env` is set, as keepalived's `env -i` does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub clear_env: bool,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command as one shell-like line, for logs and test assertions.
    pub fn line(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={v} "));
        }
        s.push_str(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// What a command returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn ok(stdout: impl Into<Vec<u8>>) -> CmdOutput {
        CmdOutput {
            code: Some(0),
            stdout: stdout.into(),
            stderr: Vec::new(),
        }
    }
}

pub trait Runner: Send + Sync {
    /// Runs `cmd` to completion. `Err` only when it could not be started at all.
    fn run(&self, cmd: &Cmd) -> io::Result<CmdOutput>;

    /// Whether `program` can be run here (an absolute path that exists, or found on PATH).
    fn exists(&self, program: &str) -> bool;
}

/// Runs real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> io::Result<CmdOutput> {
        let mut c = std::process::Command::new(&cmd.program);
        c.args(&cmd.args).stdin(Stdio::null());
        if cmd.clear_env {
            c.env_clear();
            c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        }
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        let out = c.output()?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    fn exists(&self, program: &str) -> bool {
        if program.contains('/') {
            return std::path::Path::new(program).exists();
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&path).any(|d| d.join(program).is_file())
    }
}

/// The system's runner on `/`. Under another root (a test, a staging tree) a command runs
/// only from inside it (`/etc/init.d/keepalived` is `<root>/etc/init.d/keepalived`); one
/// that is not there succeeds without output, so nothing of the host is touched.
pub struct RootedRunner {
    root: Option<PathBuf>,
}

impl RootedRunner {
    pub fn new(root: &Path) -> RootedRunner {
        let system = root.canonicalize().is_ok_and(|r| r == Path::new("/"));
        RootedRunner {
            root: (!system).then(|| root.to_path_buf()),
        }
    }

    fn inside(&self, root: &Path, program: &str) -> Option<PathBuf> {
        let p = root.join(program.trim_start_matches('/'));
        (program.starts_with('/') && p.is_file()).then_some(p)
    }
}

impl Runner for RootedRunner {
    fn run(&self, cmd: &Cmd) -> io::Result<CmdOutput> {
        let Some(root) = &self.root else {
            return SystemRunner.run(cmd);
        };
        match self.inside(root, &cmd.program) {
            Some(p) => {
                let mut c = cmd.clone();
                c.program = p.to_string_lossy().into_owned();
                SystemRunner.run(&c)
            }
            None => Ok(CmdOutput::ok(Vec::new())),
        }
    }

    fn exists(&self, program: &str) -> bool {
        match &self.root {
            None => SystemRunner.exists(program),
            Some(root) => self.inside(root, program).is_some(),
        }
    }
}

/// Records every command and answers from a table of canned outputs (by program name or
/// full line); anything not in the table succeeds with empty output.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<Cmd>>,
    answers: Mutex<Vec<(String, CmdOutput)>>,
    present: Mutex<Vec<String>>,
}

impl RecordingRunner {
    pub fn new() -> RecordingRunner {
        RecordingRunner::default()
    }

    /// Answers `output` to any command whose program or line starts with `prefix`.
    pub fn answer(&self, prefix: impl Into<String>, output: CmdOutput) {
        self.answers
            .lock()
            .expect("runner lock")
            .push((prefix.into(), output));
    }

    /// Makes `exists(program)` true.
    pub fn provide(&self, program: impl Into<String>) {
        self.present
            .lock()
            .expect("runner lock")
            .push(program.into());
    }

    pub fn calls(&self) -> Vec<Cmd> {
        self.calls.lock().expect("runner lock").clone()
    }

    /// Every call as `Cmd::line`, in order.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Cmd::line).collect()
    }

    pub fn clear(&self) {
        self.calls.lock().expect("runner lock").clear();
    }
}

impl Runner for RecordingRunner {
    fn run(&self, cmd: &Cmd) -> io::Result<CmdOutput> {
        self.calls.lock().expect("runner lock").push(cmd.clone());
        let line = cmd.line();
        let answers = self.answers.lock().expect("runner lock");
        let hit = answers.iter().rev().find(|(p, _)| {
            cmd.program == *p || line.starts_with(p.as_str()) || {
                let plain = format!("{} {}", cmd.program, cmd.args.join(" "));
                plain.starts_with(p.as_str())
            }
        });
        Ok(hit
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| CmdOutput::ok(Vec::new())))
    }

    fn exists(&self, program: &str) -> bool {
        self.present
            .lock()
            .expect("runner lock")
            .iter()
            .any(|p| p == program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooted_runner_runs_only_what_is_inside_its_root() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("etc/init.d/keepalived");
        std::fs::create_dir_all(script.parent().unwrap()).unwrap();
        std::fs::write(&script, "#!/bin/sh\necho \"inside $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = RootedRunner::new(d.path());
        let out = r
            .run(&Cmd::new("/etc/init.d/keepalived").arg("reload"))
            .unwrap();
        assert_eq!(out.stdout, b"inside reload\n");
        assert!(r.exists("/etc/init.d/keepalived"));
        // The host's programs are never run from a test root: they succeed without output.
        assert!(!r.exists("/bin/sh"));
        let out = r
            .run(&Cmd::new("/bin/sh").args(["-c", "echo host"]))
            .unwrap();
        assert!(out.success() && out.stdout.is_empty());
        // At `/` it is the system's runner.
        let sys = RootedRunner::new(Path::new("/"));
        assert!(sys.exists("/bin/sh"));
        let out = sys
            .run(&Cmd::new("/bin/sh").args(["-c", "echo host"]))
            .unwrap();
        assert_eq!(out.stdout, b"host\n");
    }

    #[test]
    fn recording_runner_records_and_answers() {
        let r = RecordingRunner::new();
        r.answer("sysupgrade -l", CmdOutput::ok("/etc/config/network\n"));
        let out = r.run(&Cmd::new("sysupgrade").arg("-l")).unwrap();
        assert_eq!(out.stdout, b"/etc/config/network\n");
        let out = r
            .run(&Cmd::new("/etc/init.d/firewall").arg("reload"))
            .unwrap();
        assert!(out.success() && out.stdout.is_empty());
        assert_eq!(
            r.lines(),
            vec!["sysupgrade -l", "/etc/init.d/firewall reload"]
        );
    }

    #[test]
    fn system_runner_reports_exit_code() {
        let out = SystemRunner
            .run(&Cmd::new("sh").args(["-c", "echo hi; exit 3"]))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"hi\n");
        assert!(SystemRunner.exists("sh"));
        assert!(!SystemRunner.exists("/nonexistent/prog"));
    }
}
