//! Running a benchmarked process: wall time, timestamped output lines, and peak resident memory of
//! the process and its descendants (Linux `/proc`).
//!
//! Peak RSS is the larger of (a) the root process's `ru_maxrss` from `wait4(2)` (exact, kernel-kept)
//! and (b) the largest sum of `VmRSS` over the process tree seen by sampling `/proc` every
//! [`SAMPLE_EVERY`] (needed for drivers that start a child, like PySpark's JVM). No timing is
//! asserted anywhere: this only measures.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the process tree's memory is sampled and the watcher is called without a new line.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One output line and when it arrived, measured from the spawn.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Duration,
    pub stream: Stream,
    pub text: String,
}

/// What the watcher sees on each call.
#[derive(Debug)]
pub struct Probe<'a> {
    /// Since the spawn.
    pub elapsed: Duration,
    /// The line that just arrived, if the call is for a line.
    pub line: Option<&'a Line>,
    /// Resident memory of the whole process tree at the last sample, bytes.
    pub tree_rss: u64,
}

/// What the watcher wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// SIGTERM to the root process (a clean stop at a batch boundary for the worker).
    Terminate,
    /// SIGKILL to the whole process tree (a run that went out of bounds).
    Kill,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Spawn to exit.
    pub wall: Duration,
    /// Exit code, or `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Peak resident memory (see the module doc), bytes.
    pub peak_rss: u64,
    /// CPU time (user + system) of the root process and the children it waited for, from
    /// `wait4(2)`'s `rusage`: the cores a one-process engine used, times the wall time.
    pub cpu: Duration,
    /// Every output line, in arrival order.
    pub lines: Vec<Line>,
    /// Whether the watcher asked for [`Action::Kill`].
    pub killed: bool,
}

impl Outcome {
    /// The first line starting with `prefix`.
    pub fn first(&self, prefix: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.text.starts_with(prefix))
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `command` to completion with stdout and stderr captured line by line, calling `watch` for
/// every line and every [`SAMPLE_EVERY`].
///
/// # Errors
/// Spawning or waiting failed.
pub fn run(
    command: &mut Command,
    mut watch: impl FnMut(&Probe<'_>) -> Action,
) -> std::io::Result<Outcome> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let (sender, receiver) = mpsc::channel::<Line>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, Stream::Stdout, started, sender.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, Stream::Stderr, started, sender.clone()));
    }
    drop(sender);

    let mut lines = Vec::new();
    let mut peak_tree = 0u64;
    let mut tree_rss = 0u64;
    let mut next_sample = Instant::now();
    let mut killed = false;
    let mut terminated = false;
    let (status, rusage) = loop {
        if Instant::now() >= next_sample {
            tree_rss = tree_rss_bytes(pid);
            peak_tree = peak_tree.max(tree_rss);
            next_sample = Instant::now() + SAMPLE_EVERY;
        }
        let (action, got_line) = match receiver.recv_timeout(SAMPLE_EVERY) {
            Ok(line) => {
                let action = watch(&Probe {
                    elapsed: started.elapsed(),
                    line: Some(&line),
                    tree_rss,
                });
                lines.push(line);
                (action, true)
            }
            Err(_) => (
                watch(&Probe {
                    elapsed: started.elapsed(),
                    line: None,
                    tree_rss,
                }),
                false,
            ),
        };
        match action {
            Action::Continue => {}
            Action::Terminate if !terminated => {
                terminated = true;
                // SAFETY: kill(2) on our own child's pid; no memory is touched.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            Action::Terminate => {}
            Action::Kill if !killed => {
                killed = true;
                for descendant in descendants(pid) {
                    // SAFETY: as above, on processes of our own tree.
                    unsafe { libc::kill(descendant, libc::SIGKILL) };
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Action::Kill => {}
        }
        if got_line {
            continue;
        }
        if let Some(done) = try_wait4(pid)? {
            break done;
        }
    };
    let wall = started.elapsed();
    // The pipes close when the process (and any child holding them) exits.
    for line in receiver.iter() {
        lines.push(line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    // ru_maxrss is in KiB on Linux.
    let root_peak = (rusage.ru_maxrss.max(0) as u64) * 1024;
    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    // std's Child would wait again on drop only if asked; it is not.
    drop(child);
    let seconds = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(Outcome {
        wall,
        exit_code,
        peak_rss: root_peak.max(peak_tree),
        cpu: seconds(rusage.ru_utime) + seconds(rusage.ru_stime),
        lines,
        killed,
    })
}

fn spawn_reader(
    stream: impl std::io::Read + Send + 'static,
    kind: Stream,
    started: Instant,
    sender: mpsc::Sender<Line>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for text in reader.lines() {
            let Ok(text) = text else { break };
            let line = Line {
                at: started.elapsed(),
                stream: kind,
                text,
            };
            if sender.send(line).is_err() {
                break;
            }
        }
    })
}

/// `wait4(pid, WNOHANG)`: the status and resource usage once the process has exited.
fn try_wait4(pid: libc::pid_t) -> std::io::Result<Option<(i32, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; pid is our child.
    let result = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
    match result {
        0 => Ok(None),
        r if r == pid => Ok(Some((status, rusage))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// All processes below `root` (children, grandchildren, ...), from `/proc/*/stat`.
pub fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    found.remove(0);
    found
}

fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`), or 0.
pub fn status_bytes(pid: libc::pid_t, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// Resident memory of `root` and all its descendants now, bytes.
pub fn tree_rss_bytes(root: libc::pid_t) -> u64 {
    let own = status_bytes(root, "VmRSS");
    // Most runs are one process: skip the /proc scan while there are no children.
    let children = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .map(|c| !c.trim().is_empty())
        .unwrap_or(true);
    if !children {
        return own;
    }
    own + descendants(root)
        .into_iter()
        .map(|pid| status_bytes(pid, "VmRSS"))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child_and_its_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo two >&2; sleep 0.1; echo three"]);
        let mut seen = Vec::new();
        let outcome = run(&mut command, |probe| {
            if let Some(line) = probe.line {
                seen.push(line.text.clone());
            }
            Action::Continue
        })
        .expect("runs");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(seen.len(), 3);
        assert!(outcome.first("three").is_some());
        assert!(outcome.first("two").map(|l| l.stream) == Some(Stream::Stderr));
        assert!(outcome.peak_rss > 0, "a shell has some resident memory");
    }

    #[test]
    fn terminate_stops_a_sleeping_child() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let outcome = run(&mut command, |probe| {
            if probe.elapsed > Duration::from_millis(100) {
                Action::Terminate
            } else {
                Action::Continue
            }
        })
        .expect("runs");
        assert_eq!(outcome.exit_code, None, "ended by SIGTERM");
        assert!(outcome.wall < Duration::from_secs(30));
    }

    #[test]
    fn descendants_and_tree_rss_include_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'sleep 2' & sleep 2; wait"])
            .spawn()
            .expect("spawns");
        let pid = child.id() as libc::pid_t;
        std::thread::sleep(Duration::from_millis(300));
        let below = descendants(pid);
        let tree = tree_rss_bytes(pid);
        let own = status_bytes(pid, "VmRSS");
        let _ = child.kill();
        for pid in &below {
            // SAFETY: kill(2) on processes this test started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = child.wait();
        // sh -> {sh -> sleep, sleep}; the inner sh may exec its sleep, so 2 or 3 processes.
        assert!(below.len() >= 2, "{below:?}");
        assert!(tree > own && own > 0, "tree {tree} own {own}");
    }
}
