//! What a Slurm partition offers one task, asked of `sinfo` before a job is written.
//! In: the partition's name (or none, for the cluster's default). Out: its nodes' CPUs,
//! memory and GPUs and its time limit, and the settings of a job that no node of it
//! can ever run.
//!
//! Slurm accepts such a job and keeps its tasks pending (reason `PartitionConfig`,
//! `PartitionTimeLimit`, ...) until the cluster changes, which for a user looks like a
//! job that silently never starts; asking first turns that into one line at submission.

use super::SlurmOptions;
use crate::error::{Error, Result};

/// One node of a partition, as `sinfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub cpus: u64,
    /// RealMemory, in MiB (sbatch's `M`).
    pub mem_mb: u64,
    pub gpus: u64,
}

/// A partition: its nodes, whatever their state (a down node may come back), and its
/// time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub nodes: Vec<Node>,
    pub max_time: TimeLimit,
}

impl Partition {
    pub fn max_cpus(&self) -> u64 {
        self.nodes.iter().map(|n| n.cpus).max().unwrap_or(0)
    }
}

/// A time limit as Slurm writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    Unlimited,
    Seconds(u64),
    /// Written in a way this parser does not know; never compared.
    Unknown,
}

/// One line per node and partition; `%P` marks the default partition with `*`.
const SINFO_FORMAT: &str = "%P|%N|%c|%m|%G|%l";

/// The partition a job goes to: `name`, or the cluster's default. An
/// [`Error::Slurm`] when Slurm cannot be asked or does not list the partition.
pub fn partition(name: Option<&str>) -> Result<Partition> {
    let text = super::run_slurm("sinfo", &["-h", "-a", "-N", "-o", SINFO_FORMAT])?
        .map_err(|e| Error::Slurm(format!("Slurm not reachable: {e}")))?;
    pick(&parse_sinfo(&text)?, name)
}

/// One row of [`SINFO_FORMAT`]: the partition's name, whether it is the default, one
/// of its nodes, and its time limit.
type SinfoRow = (String, bool, Node, TimeLimit);

fn parse_sinfo(text: &str) -> Result<Vec<SinfoRow>> {
    let unreadable = |line: &str| {
        Error::Slurm(format!(
            "sinfo printed {line:?}, which histomap cannot read"
        ))
    };
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.trim().split('|').collect();
        let [partition, node, cpus, mem, gres, time] = f[..] else {
            return Err(unreadable(line));
        };
        // Aggregated rows end in `+` ("at least"); per-node rows are exact.
        let number = |s: &str| s.trim().trim_end_matches('+').parse::<u64>().ok();
        let (Some(cpus), Some(mem_mb)) = (number(cpus), number(mem)) else {
            return Err(unreadable(line));
        };
        let default = partition.ends_with('*');
        let node = Node {
            name: node.to_string(),
            cpus,
            mem_mb,
            gpus: gpus_in(gres),
        };
        let name = partition.trim_end_matches('*').to_string();
        rows.push((name, default, node, parse_time(time)));
    }
    Ok(rows)
}

fn pick(rows: &[SinfoRow], name: Option<&str>) -> Result<Partition> {
    let wanted = match name {
        Some(n) => n.to_string(),
        None => match rows.iter().find(|r| r.1) {
            Some(r) => r.0.clone(),
            None => {
                return Err(Error::Slurm(
                    "no --partition given and sinfo marks no partition as the default".into(),
                ))
            }
        },
    };
    let mine: Vec<&SinfoRow> = rows.iter().filter(|r| r.0 == wanted).collect();
    let Some(first) = mine.first() else {
        let mut listed: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        listed.dedup();
        return Err(Error::Slurm(format!(
            "sinfo lists no partition {wanted} with nodes (it lists: {})",
            listed.join(", ")
        )));
    };
    Ok(Partition {
        name: wanted,
        nodes: mine.iter().map(|r| r.2.clone()).collect(),
        max_time: first.3,
    })
}

/// The GPUs of a node's generic resources, as `%G` writes them: `(null)`,
/// `gpu:2`, `gpu:a100:2(S:0-1),gpu:v100:1,mps:400`. Counts may carry Slurm's binary
/// suffixes (`K` = 1024); `gpu` alone is one.
pub fn gpus_in(gres: &str) -> u64 {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    // Commas also separate the sockets inside `(S:0,1)`.
    for (i, c) in gres.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&gres[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&gres[start..]);
    items
        .iter()
        .map(|item| item.split('(').next().unwrap_or_default().trim())
        .filter(|item| item.split(':').next() == Some("gpu"))
        .map(|item| {
            let last = item.rsplit(':').next().unwrap_or_default();
            // `gpu` or `gpu:TYPE`: one.
            item.contains(':')
                .then(|| count(last))
                .flatten()
                .unwrap_or(1)
        })
        .sum()
}

/// A gres count: digits with an optional K, M, G, T or P (powers of 1024).
fn count(s: &str) -> Option<u64> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let power = match &s[digits.len()..] {
        "" => 0,
        "K" | "k" => 1,
        "M" | "m" => 2,
        "G" | "g" => 3,
        "T" | "t" => 4,
        "P" | "p" => 5,
        _ => return None,
    };
    n.checked_mul(1024u64.pow(power))
}

/// A time limit in any of Slurm's forms: `minutes`, `minutes:seconds`,
/// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes`,
/// `days-hours:minutes:seconds`, and `UNLIMITED`, `infinite` or `-1` for none.
/// sbatch also reads a bare `0` as none; sinfo never prints one.
pub fn parse_time(s: &str) -> TimeLimit {
    let s = s.trim();
    if ["unlimited", "infinite", "-1", "0"]
        .iter()
        .any(|w| s.eq_ignore_ascii_case(w))
    {
        return TimeLimit::Unlimited;
    }
    let (days, clock) = match s.split_once('-') {
        Some((d, rest)) => match d.parse::<u64>() {
            Ok(d) => (Some(d), rest),
            Err(_) => return TimeLimit::Unknown,
        },
        None => (None, s),
    };
    let parts: Option<Vec<u64>> = clock.split(':').map(|p| p.parse().ok()).collect();
    let Some(parts) = parts else {
        return TimeLimit::Unknown;
    };
    let (h, m, sec) = match (days, &parts[..]) {
        (None, &[m]) => (0, m, 0),
        (None, &[m, s]) => (0, m, s),
        (_, &[h, m, s]) => (h, m, s),
        (Some(_), &[h]) => (h, 0, 0),
        (Some(_), &[h, m]) => (h, m, 0),
        _ => return TimeLimit::Unknown,
    };
    TimeLimit::Seconds(((days.unwrap_or(0) * 24 + h) * 60 + m) * 60 + sec)
}

/// Seconds as Slurm writes a limit: `[days-]hours:minutes:seconds`.
fn show_time(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h}:{m:02}:{s:02}")
    }
}

/// sbatch's `--mem` in MiB: digits, then K, M (the default), G or T; sbatch reads no
/// further (`8GB` is `8G`). `None` for what sbatch itself would reject.
pub fn parse_mem(s: &str) -> Option<u64> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..end].parse().ok()?;
    match s[end..].chars().next().map(|c| c.to_ascii_uppercase()) {
        None | Some('M') => Some(n),
        Some('K') => Some(n.div_ceil(1024)),
        Some('G') => n.checked_mul(1024),
        Some('T') => n.checked_mul(1024 * 1024),
        Some(_) => None,
    }
}

/// A setting of the job that no node of the partition can ever satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsatisfiable {
    /// More of one resource than any node has.
    Resource {
        setting: &'static str,
        asked: String,
        partition: String,
        /// The most any node has, with its unit.
        most: String,
    },
    /// GPUs on a partition without any.
    NoGpus { asked: u64, partition: String },
    /// Each within some node, but no node has them all.
    Together { asked: String, partition: String },
    /// A time limit above the partition's.
    Time {
        asked: String,
        partition: String,
        max: u64,
    },
}

impl std::fmt::Display for Unsatisfiable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsatisfiable::Resource {
                setting,
                asked,
                partition,
                most,
            } => write!(
                f,
                "{setting} {asked}: no node of partition {partition} has more than {most}"
            ),
            Unsatisfiable::NoGpus { asked, partition } => {
                write!(
                    f,
                    "--gpus {asked}: no node of partition {partition} has a GPU"
                )
            }
            Unsatisfiable::Together { asked, partition } => write!(
                f,
                "{asked}: no node of partition {partition} has all of that at once"
            ),
            Unsatisfiable::Time {
                asked,
                partition,
                max,
            } => write!(
                f,
                "--time {asked}: partition {partition} allows at most {} (its MaxTime)",
                show_time(*max)
            ),
        }
    }
}

/// Every setting of `o` that no node of `p` can satisfy, so Slurm would keep each
/// task pending. A `--mem` or `--time` sbatch cannot read is left to sbatch to reject.
pub fn unsatisfiable(o: &SlurmOptions, p: &Partition) -> Vec<Unsatisfiable> {
    let cpus = o.cpus.get() as u64;
    // `--mem=0` asks for a whole node, whatever it has.
    let mem = o.mem.as_deref().and_then(parse_mem).filter(|&m| m > 0);
    let gpus = o.gpus.map_or(0, u64::from);
    let mut found = Vec::new();
    let resource = |setting, asked: String, most: u64, unit: &str| Unsatisfiable::Resource {
        setting,
        asked,
        partition: p.name.clone(),
        most: format!("{most}{unit}"),
    };
    let max = |f: fn(&Node) -> u64| p.nodes.iter().map(f).max().unwrap_or(0);
    let (most_cpus, most_mem, most_gpus) = (max(|n| n.cpus), max(|n| n.mem_mb), max(|n| n.gpus));
    if cpus > most_cpus {
        found.push(resource("--cpus", cpus.to_string(), most_cpus, " CPUs"));
    }
    if let (Some(m), Some(given)) = (mem, &o.mem) {
        if m > most_mem {
            found.push(resource("--mem", given.clone(), most_mem, "M of memory"));
        }
    }
    if gpus > 0 && most_gpus == 0 {
        found.push(Unsatisfiable::NoGpus {
            asked: gpus,
            partition: p.name.clone(),
        });
    } else if gpus > most_gpus {
        found.push(resource("--gpus", gpus.to_string(), most_gpus, " GPUs"));
    }
    let fits = |n: &Node| n.cpus >= cpus && mem.is_none_or(|m| n.mem_mb >= m) && n.gpus >= gpus;
    if found.is_empty() && !p.nodes.iter().any(fits) {
        let mut asked = format!("--cpus {cpus}");
        if let Some(m) = &o.mem {
            asked.push_str(&format!(" --mem {m}"));
        }
        if gpus > 0 {
            asked.push_str(&format!(" --gpus {gpus}"));
        }
        found.push(Unsatisfiable::Together {
            asked,
            partition: p.name.clone(),
        });
    }
    if let (Some(asked), TimeLimit::Seconds(max)) = (&o.time, p.max_time) {
        // Slurm keeps job limits in whole minutes, rounded up.
        let over = match parse_time(asked) {
            TimeLimit::Unlimited => true,
            TimeLimit::Seconds(s) => s.div_ceil(60) * 60 > max,
            TimeLimit::Unknown => false,
        };
        if over {
            found.push(Unsatisfiable::Time {
                asked: asked.clone(),
                partition: p.name.clone(),
                max,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::slurm::Cpus;

    #[test]
    fn sinfo_rows_make_partitions() {
        // A default partition of two unlike nodes, a GPU partition sharing one of
        // them, an aggregated row's `+`, and a drained node's row alike.
        let text = "\
debug*|n1|2|23081|(null)|infinite
debug*|n2|64|515000+|gpu:a100:2(S:0-1),mps:400|infinite
gpu|n2|64|515000|gpu:a100:2(S:0-1),mps:400|2-00:00:00
gpu|g7|32|256000|gpu:v100:4(S:0,1),gpu:t4:1|2-00:00:00
";
        let rows = parse_sinfo(text).unwrap();
        let debug = pick(&rows, None).unwrap();
        assert_eq!(debug.name, "debug");
        assert_eq!(debug.max_time, TimeLimit::Unlimited);
        assert_eq!(debug.max_cpus(), 64);
        assert_eq!(debug.nodes[1].mem_mb, 515000);
        let gpu = pick(&rows, Some("gpu")).unwrap();
        assert_eq!(gpu.max_time, TimeLimit::Seconds(2 * 86400));
        let gpus: Vec<u64> = gpu.nodes.iter().map(|n| n.gpus).collect();
        assert_eq!(gpus, [2, 5]);
        let missing = pick(&rows, Some("long")).unwrap_err().to_string();
        assert_eq!(
            missing,
            "sinfo lists no partition long with nodes (it lists: debug, gpu)"
        );
        let no_default = parse_sinfo("a|n1|2|100|(null)|1:00:00\n").unwrap();
        assert!(pick(&no_default, None).is_err());
        assert!(parse_sinfo("").unwrap().is_empty());
        for odd in [
            "debug*|n1|2|23081|(null)",
            "debug*|n1|two|1|(null)|infinite",
        ] {
            let e = parse_sinfo(odd).unwrap_err().to_string();
            assert!(e.contains("which histomap cannot read"), "{e}");
        }
    }

    #[test]
    fn gres_strings_count_gpus() {
        for (gres, n) in [
            ("(null)", 0),
            ("", 0),
            ("gpu:2", 2),
            ("gpu", 1),
            ("gpu:a100", 1),
            ("gpu:a100:2(S:0)", 2),
            ("gpu:a100:2(S:0-1),gpu:v100:1", 3),
            ("gpu:tesla:4(S:0,1),mps:400", 4),
            ("mps:400,shard:8", 0),
            ("gpu:1K", 1024),
            ("gpus:3", 0),
        ] {
            assert_eq!(gpus_in(gres), n, "{gres}");
        }
    }

    #[test]
    fn times_in_every_slurm_form() {
        use TimeLimit::*;
        for (s, t) in [
            ("infinite", Unlimited),
            ("UNLIMITED", Unlimited),
            ("-1", Unlimited),
            ("0", Unlimited),
            ("30", Seconds(1800)),
            ("30:00", Seconds(1800)),
            ("10:30", Seconds(630)),
            ("4:00:00", Seconds(14400)),
            ("1-0", Seconds(86400)),
            ("2-12", Seconds(2 * 86400 + 12 * 3600)),
            ("1-2:30", Seconds(86400 + 2 * 3600 + 1800)),
            ("7-00:00:00", Seconds(7 * 86400)),
            ("n/a", Unknown),
            ("1:2:3:4", Unknown),
            ("x-1", Unknown),
            ("", Unknown),
        ] {
            assert_eq!(parse_time(s), t, "{s}");
        }
        assert_eq!(show_time(86400 + 3600), "1-01:00:00");
        assert_eq!(show_time(1800), "0:30:00");
    }

    #[test]
    fn memory_in_sbatch_units() {
        for (s, mb) in [
            ("8G", Some(8192)),
            ("8g", Some(8192)),
            ("8GB", Some(8192)),
            ("1024", Some(1024)),
            ("1024M", Some(1024)),
            ("1500K", Some(2)),
            ("2T", Some(2 * 1024 * 1024)),
            ("0", Some(0)),
            ("1.5G", None),
            ("8X", None),
            ("G", None),
        ] {
            assert_eq!(parse_mem(s), mb, "{s}");
        }
    }

    fn options(cpus: usize) -> SlurmOptions {
        SlurmOptions {
            array: 3,
            job_name: "histomap".into(),
            partition: None,
            cpus: Cpus::Given(cpus),
            mem: None,
            gpus: None,
            time: None,
        }
    }

    #[test]
    fn requests_no_node_can_run_are_named() {
        let node = |name: &str, cpus, mem_mb, gpus| Node {
            name: name.into(),
            cpus,
            mem_mb,
            gpus,
        };
        let p = Partition {
            name: "short".into(),
            nodes: vec![node("a", 64, 8192, 0), node("b", 4, 524288, 2)],
            max_time: TimeLimit::Seconds(86400),
        };
        let problems = |o: &SlurmOptions| -> Vec<String> {
            unsatisfiable(o, &p).iter().map(|u| u.to_string()).collect()
        };
        assert!(problems(&options(64)).is_empty());
        assert_eq!(
            problems(&options(65)),
            ["--cpus 65: no node of partition short has more than 64 CPUs"]
        );
        let big = SlurmOptions {
            mem: Some("600G".into()),
            gpus: Some(3),
            time: Some("1-00:00:01".into()),
            ..options(4)
        };
        assert_eq!(
            problems(&big),
            [
                "--mem 600G: no node of partition short has more than 524288M of memory",
                "--gpus 3: no node of partition short has more than 2 GPUs",
                "--time 1-00:00:01: partition short allows at most 1-00:00:00 (its MaxTime)",
            ]
        );
        let apart = SlurmOptions {
            mem: Some("100G".into()),
            ..options(32)
        };
        assert_eq!(
            problems(&apart),
            ["--cpus 32 --mem 100G: no node of partition short has all of that at once"]
        );
        for fine in ["1-00:00:00", "1440", "23:59:30"] {
            let o = SlurmOptions {
                time: Some(fine.into()),
                mem: Some("0".into()),
                ..options(4)
            };
            assert!(problems(&o).is_empty(), "{fine}");
        }
        let forever = SlurmOptions {
            time: Some("UNLIMITED".into()),
            ..options(1)
        };
        assert_eq!(problems(&forever).len(), 1);
        let no_gpus = Partition {
            max_time: TimeLimit::Unlimited,
            nodes: vec![node("c", 8, 1024, 0)],
            ..p.clone()
        };
        assert!(unsatisfiable(&forever, &no_gpus).is_empty());
        let gpu = SlurmOptions {
            gpus: Some(1),
            ..options(1)
        };
        assert_eq!(
            unsatisfiable(&gpu, &no_gpus)[0].to_string(),
            "--gpus 1: no node of partition short has a GPU"
        );
    }
}
