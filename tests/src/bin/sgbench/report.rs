//! `sgbench report`: the side-by-side table and the targets.
//!
//! Targets (docs/BENCHMARKS.md): shimgate bulk >= 1.5x `ssh -D`; shimgate
//! setup p50 <= 1.6x the plain proxy (microsocks); shimgate connections/s >=
//! 0.5x the plain proxy; against shadowsocks-rust, the program a user would
//! pick for speed: bulk >= 1.2x, setup p50 <= 1.0x, connections/s >= 1.0x,
//! server CPU s/GB <= 0.9x, memory per idle connection <= 1.0x; peer paths:
//! direct peer bulk >= the gateway path's bulk, relayed peer bulk >= 0.7x
//! the gateway path's, peer session setup p50 <= 3 ms. A missed target is
//! reported, not an error: the exit status is 0 unless a result file can't
//! be read.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct ReportArgs {
    /// Result files written by `sgbench measure` or `sgbench failed`, in
    /// table order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also write everything (results, machine, targets) as JSON to this file
    /// ("-" for stdout instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Date of the run, shown in the header.
    #[arg(long)]
    date: Option<String>,
    /// A line shown under the header (e.g. the load average), repeatable.
    #[arg(long)]
    note: Vec<String>,
}

const SHIMGATE: &str = "shimgate";
const SSH: &str = "ssh";
const PLAIN: &str = "microsocks";
const SHADOWSOCKS: &str = "shadowsocks";
const PEER_DIRECT: &str = "peer-direct";
const PEER_RELAY: &str = "peer-relay";

struct Target {
    id: &'static str,
    what: &'static str,
    ours: &'static str,
    /// The path compared with; None for an absolute bound.
    theirs: Option<&'static str>,
    /// JSON pointer of the figure inside a result.
    field: &'static str,
    /// With `theirs`: ratio = ours / theirs; pass when ratio >= min (or
    /// <= max). Without: pass when the figure itself is <= max (in the
    /// field's unit).
    bound: Bound,
}

enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

const TARGETS: [Target; 12] = [
    Target {
        id: "bulk",
        what: "bulk throughput",
        ours: SHIMGATE,
        theirs: Some(SSH),
        field: "/bulk/gbps_median",
        bound: Bound::AtLeast(1.5),
    },
    Target {
        id: "setup_p50",
        what: "setup latency p50",
        ours: SHIMGATE,
        theirs: Some(PLAIN),
        field: "/setup/p50_us",
        bound: Bound::AtMost(1.6),
    },
    Target {
        id: "cps",
        what: "connections/s",
        ours: SHIMGATE,
        theirs: Some(PLAIN),
        field: "/cps/per_sec",
        bound: Bound::AtLeast(0.5),
    },
    Target {
        id: "ss_bulk",
        what: "bulk throughput",
        ours: SHIMGATE,
        theirs: Some(SHADOWSOCKS),
        field: "/bulk/gbps_median",
        bound: Bound::AtLeast(1.2),
    },
    Target {
        id: "ss_setup_p50",
        what: "setup latency p50",
        ours: SHIMGATE,
        theirs: Some(SHADOWSOCKS),
        field: "/setup/p50_us",
        bound: Bound::AtMost(1.0),
    },
    Target {
        id: "ss_cps",
        what: "connections/s",
        ours: SHIMGATE,
        theirs: Some(SHADOWSOCKS),
        field: "/cps/per_sec",
        bound: Bound::AtLeast(1.0),
    },
    Target {
        id: "ss_cpu",
        what: "server CPU s/GB",
        ours: SHIMGATE,
        theirs: Some(SHADOWSOCKS),
        field: "/bulk/cpu_s_per_gb_total",
        bound: Bound::AtMost(0.9),
    },
    Target {
        id: "ss_idle_memory",
        what: "memory per idle connection",
        ours: SHIMGATE,
        theirs: Some(SHADOWSOCKS),
        field: "/idle/kib_per_conn_total",
        bound: Bound::AtMost(1.0),
    },
    Target {
        id: "peer_direct_bulk",
        what: "bulk throughput",
        ours: PEER_DIRECT,
        theirs: Some(SHIMGATE),
        field: "/bulk/gbps_median",
        bound: Bound::AtLeast(1.0),
    },
    Target {
        id: "peer_relay_bulk",
        what: "bulk throughput",
        ours: PEER_RELAY,
        theirs: Some(SHIMGATE),
        field: "/bulk/gbps_median",
        bound: Bound::AtLeast(0.7),
    },
    Target {
        id: "peer_direct_setup_p50",
        what: "setup latency p50",
        ours: PEER_DIRECT,
        theirs: None,
        field: "/setup/p50_us",
        bound: Bound::AtMost(3000.0),
    },
    Target {
        id: "peer_relay_setup_p50",
        what: "setup latency p50",
        ours: PEER_RELAY,
        theirs: None,
        field: "/setup/p50_us",
        bound: Bound::AtMost(3000.0),
    },
];

pub fn run(args: ReportArgs) -> Result<()> {
    let mut results = Vec::new();
    for f in &args.files {
        let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", f.display()))?;
        results.push(v);
    }
    let machine = machine();
    let targets: Vec<Value> = TARGETS.iter().map(|t| evaluate(t, &results)).collect();
    let text = render(
        &results,
        &machine,
        &targets,
        args.date.as_deref(),
        &args.note,
    );
    let to_stdout_json = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !to_stdout_json {
        print!("{text}");
    }
    if let Some(path) = &args.json {
        let all = json!({
            "date": args.date,
            "notes": args.note,
            "machine": machine,
            "results": results,
            "targets": targets,
        });
        let bytes = serde_json::to_vec_pretty(&all)?;
        if to_stdout_json {
            println!("{}", String::from_utf8_lossy(&bytes));
        } else {
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({ "nproc": nproc, "cpu": model, "kernel": kernel })
}

/// How a path is named in the targets section.
fn short(name: &str) -> &str {
    match name {
        SSH => "ssh -D",
        other => other,
    }
}

fn find<'a>(results: &'a [Value], name: &str) -> Option<&'a Value> {
    results.iter().find(|r| r["name"] == name)
}

fn evaluate(t: &Target, results: &[Value]) -> Value {
    let ours = find(results, t.ours).and_then(|r| r.pointer(t.field)?.as_f64());
    let theirs = t
        .theirs
        .and_then(|th| find(results, th))
        .and_then(|r| r.pointer(t.field)?.as_f64());
    let (bound_kind, bound) = match t.bound {
        Bound::AtLeast(b) => ("at_least", b),
        Bound::AtMost(b) => ("at_most", b),
    };
    let check = |v: f64| match t.bound {
        Bound::AtLeast(b) => v >= b,
        Bound::AtMost(b) => v <= b,
    };
    let (ratio, verdict) = match (t.theirs, ours, theirs) {
        (None, Some(o), _) => (None, if check(o) { "PASS" } else { "MISS" }),
        (Some(_), Some(o), Some(th)) if th > 0.0 => {
            let r = o / th;
            (Some(r), if check(r) { "PASS" } else { "MISS" })
        }
        _ => (None, "N/A"),
    };
    json!({
        "id": t.id,
        "what": t.what,
        "ours": t.ours,
        "theirs": t.theirs,
        "ours_value": ours,
        "theirs_value": theirs,
        "ratio": ratio,
        "bound": bound_kind,
        "absolute": t.theirs.is_none(),
        "target": bound,
        "verdict": verdict,
    })
}

fn fmt_us(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 10_000.0 => format!("{:.1} ms", us / 1000.0),
        Some(us) => format!("{us:.0} us"),
    }
}

/// A bound in microseconds, as milliseconds.
fn fmt_ms(us: f64) -> String {
    format!("{} ms", us / 1000.0)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

fn label(r: &Value) -> String {
    r["label"]
        .as_str()
        .or(r["name"].as_str())
        .unwrap_or("?")
        .to_string()
}

fn render(
    results: &[Value],
    machine: &Value,
    targets: &[Value],
    date: Option<&str>,
    notes: &[String],
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nshimgate benchmark{}: {} CPUs, {}, Linux {}",
        date.map(|d| format!(" ({d})")).unwrap_or_default(),
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
    );
    for n in notes {
        let _ = writeln!(o, "{n}");
    }
    if let Some(r) = results.iter().find(|r| r.get("bulk").is_some()) {
        let _ = writeln!(
            o,
            "bulk: median of {} transfers of {} MiB over one connection; setup: {} sequential samples; conn/s: {} clients for {} s",
            r["bulk"]["runs_gbps"].as_array().map_or(0, |a| a.len()),
            r["bulk"]["bytes"].as_u64().unwrap_or(0) >> 20,
            r["setup"]["samples"],
            r["cps"]["clients"],
            r["cps"]["secs"],
        );
    }
    let w = results
        .iter()
        .map(|r| label(r).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        o,
        "\n{:<w$}  {:>9}  {:>10}  {:>10}  {:>9}",
        "path", "bulk GB/s", "setup p50", "setup p99", "conn/s"
    );
    for r in results {
        let l = label(r);
        if r.get("setup").is_none() && r.get("bulk").is_none() && r.get("cps").is_none() {
            let _ = writeln!(
                o,
                "{l:<w$}  FAILED: {}",
                r["error"].as_str().unwrap_or("no figures")
            );
            continue;
        }
        let _ = writeln!(
            o,
            "{l:<w$}  {:>9}  {:>10}  {:>10}  {:>9}",
            fmt_opt(r.pointer("/bulk/gbps_median").and_then(Value::as_f64), 2),
            fmt_us(r.pointer("/setup/p50_us").and_then(Value::as_f64)),
            fmt_us(r.pointer("/setup/p99_us").and_then(Value::as_f64)),
            fmt_opt(r.pointer("/cps/per_sec").and_then(Value::as_f64), 0),
        );
        if let Some(e) = r["error"].as_str() {
            let _ = writeln!(o, "{:<w$}  (incomplete: {e})", "");
        }
        if let Some(n) = r.pointer("/cps/errors").and_then(Value::as_u64)
            && n > 0
        {
            let _ = writeln!(
                o,
                "{:<w$}  ({n} connections failed during conn/s: {})",
                "",
                r["cps"]["first_error"].as_str().unwrap_or("?")
            );
        }
    }

    let idle: Vec<&Value> = results.iter().filter(|r| r.get("idle").is_some()).collect();
    if !idle.is_empty() {
        let conns = idle[0]["idle"]["conns"].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "\nresident memory (VmRSS) before and with {conns} idle tunneled connections"
        );
        let rows: Vec<(String, u64, u64, f64)> = idle
            .iter()
            .flat_map(|r| {
                let procs = r["idle"]["processes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let n = r["idle"]["conns"].as_u64().unwrap_or(1).max(1) as f64;
                let mut rows: Vec<(String, u64, u64, f64)> = procs
                    .iter()
                    .map(|p| {
                        let tree = if p["tree"].as_bool().unwrap_or(false) {
                            " (+children)"
                        } else {
                            ""
                        };
                        (
                            format!("{}: {}{tree}", label(r), p["name"].as_str().unwrap_or("?")),
                            p["before_kib"].as_u64().unwrap_or(0),
                            p["with_kib"].as_u64().unwrap_or(0),
                            p["kib_per_conn"].as_f64().unwrap_or(0.0),
                        )
                    })
                    .collect();
                if rows.len() > 1 {
                    let b: u64 = rows.iter().map(|x| x.1).sum();
                    let wi: u64 = rows.iter().map(|x| x.2).sum();
                    rows.push((
                        format!("{}: total", label(r)),
                        b,
                        wi,
                        (wi as f64 - b as f64) / n,
                    ));
                }
                rows
            })
            .collect();
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(7).max(7);
        let _ = writeln!(
            o,
            "{:<w$}  {:>10}  {:>10}  {:>8}",
            "process", "before", "with", "KiB/conn"
        );
        for (name, b, wi, per) in rows {
            let _ = writeln!(
                o,
                "{name:<w$}  {:>6.1} MiB  {:>6.1} MiB  {per:>8.1}",
                b as f64 / 1024.0,
                wi as f64 / 1024.0
            );
        }
    }

    let cpu_rows: Vec<(String, f64)> = results
        .iter()
        .flat_map(|r| {
            let l = label(r);
            let procs = r
                .pointer("/bulk/server_cpu")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut rows: Vec<(String, f64)> = procs
                .iter()
                .map(|p| {
                    let tree = if p["tree"].as_bool().unwrap_or(false) {
                        " (+children)"
                    } else {
                        ""
                    };
                    (
                        format!("{l}: {}{tree}", p["name"].as_str().unwrap_or("?")),
                        p["cpu_s_per_gb"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect();
            if rows.len() > 1 {
                let total = rows.iter().map(|x| x.1).sum();
                rows.push((format!("{l}: total"), total));
            }
            rows
        })
        .collect();
    if !cpu_rows.is_empty() {
        let _ = writeln!(
            o,
            "\nCPU time of the server processes during bulk, per GB moved"
        );
        let w = cpu_rows.iter().map(|r| r.0.len()).max().unwrap_or(7).max(7);
        let _ = writeln!(o, "{:<w$}  {:>9}", "process", "CPU s/GB");
        for (name, v) in cpu_rows {
            let _ = writeln!(o, "{name:<w$}  {v:>9.2}");
        }
    }

    let _ = writeln!(o, "\ntargets");
    for t in targets {
        let ours = t["ours_value"].as_f64();
        let theirs = t["theirs_value"].as_f64();
        let id = t["id"].as_str().unwrap_or("?");
        let f = |v: Option<f64>| {
            if id.ends_with("setup_p50") {
                fmt_us(v)
            } else if id.ends_with("bulk") {
                v.map_or("-".into(), |v| format!("{v:.2} GB/s"))
            } else if id.ends_with("cpu") {
                v.map_or("-".into(), |v| format!("{v:.2} s/GB"))
            } else if id.ends_with("memory") {
                v.map_or("-".into(), |v| format!("{v:.1} KiB"))
            } else {
                fmt_opt(v, 0)
            }
        };
        let op = if t["bound"] == "at_least" { ">=" } else { "<=" };
        let target = t["target"].as_f64().unwrap_or(0.0);
        let ours_name = short(t["ours"].as_str().unwrap_or("?"));
        let verdict = t["verdict"].as_str().unwrap_or("?");
        let what = t["what"].as_str().unwrap_or("?");
        match t["theirs"].as_str() {
            Some(th) => {
                let ratio = t["ratio"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{r:.2}x"));
                let bound = format!("{op} {target}x {}", short(th));
                let _ = writeln!(
                    o,
                    "  {what:<26} {ours_name:<11} {bound:<20} {:>10} vs {:>10} = {ratio:>6}  {verdict}",
                    f(ours),
                    f(theirs),
                );
            }
            None => {
                // Absolute bounds are latencies, in microseconds.
                let bound = format!("{op} {}", fmt_ms(target));
                let _ = writeln!(
                    o,
                    "  {what:<26} {ours_name:<11} {bound:<20} {:>10} {:>23}  {verdict}",
                    f(ours),
                    "",
                );
            }
        }
    }
    o
}
