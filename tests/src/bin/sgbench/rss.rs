//! Resident memory of processes, from `/proc/PID/status` (`VmRSS`).

use std::collections::HashMap;

use anyhow::{Context, Result, bail};

/// A process (or process tree) whose memory is reported.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    pub name: String,
    pub pid: u32,
    /// Sum the process and all its descendants (e.g. sshd and its session
    /// processes).
    pub tree: bool,
}

impl ProcSpec {
    /// Parses `NAME=PID`.
    pub fn parse(s: &str, tree: bool) -> Result<Self> {
        let Some((name, pid)) = s.split_once('=') else {
            bail!("expected NAME=PID, got {s:?}");
        };
        let pid = pid.parse().with_context(|| format!("bad pid in {s:?}"))?;
        Ok(Self {
            name: name.to_string(),
            pid,
            tree,
        })
    }

    /// Resident KiB (summed over the tree when `tree`), and the number of
    /// processes counted.
    pub fn rss_kib(&self) -> Result<(u64, usize)> {
        if !self.tree {
            return Ok((vm_rss_kib(self.pid)?, 1));
        }
        let pids = tree_pids(self.pid)?;
        let mut total = 0;
        let mut n = 0;
        for pid in pids {
            // A descendant may exit between listing and reading.
            if let Ok(kib) = vm_rss_kib(pid) {
                total += kib;
                n += 1;
            }
        }
        if n == 0 {
            bail!("process {} ({}) is gone", self.pid, self.name);
        }
        Ok((total, n))
    }

    /// CPU time (user + system) used so far, in seconds, summed over the
    /// tree when `tree`. Exited descendants that were reaped by a process in
    /// the tree are included (cutime/cstime).
    pub fn cpu_secs(&self) -> Result<f64> {
        let pids = if self.tree {
            tree_pids(self.pid)?
        } else {
            vec![self.pid]
        };
        let mut ticks = 0;
        for (i, pid) in pids.into_iter().enumerate() {
            match cpu_ticks(pid, self.tree) {
                Ok(t) => ticks += t,
                Err(e) if i == 0 => return Err(e),
                Err(_) => {} // a descendant exited meanwhile
            }
        }
        // /proc reports clock ticks in USER_HZ, which is 100 on every
        // architecture Linux runs this on.
        Ok(ticks as f64 / 100.0)
    }
}

/// utime + stime of `pid` (+ cutime + cstime with `children`).
fn cpu_ticks(pid: u32, children: bool) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .with_context(|| format!("bad {path}"))?;
    // Fields after the command name start at field 3 (state); utime is 14.
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 4 {
        bail!("bad {path}");
    }
    Ok(f[0] + f[1] + if children { f[2] + f[3] } else { 0 })
}

pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let num = rest.trim().trim_end_matches("kB").trim();
            return num
                .parse()
                .with_context(|| format!("bad VmRSS line {line:?} in {path}"));
        }
    }
    bail!("no VmRSS in {path} (zombie?)")
}

/// `root` and all its descendants.
fn tree_pids(root: u32) -> Result<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses: the fields
        // after the last ')' are "state ppid ...".
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend_from_slice(c);
        }
        i += 1;
    }
    Ok(out)
}
