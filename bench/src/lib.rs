//! Deterministic IoT events (the lecture notes' example, seed 003) for examples, tests and
//! benchmarks.
//!
//! Row `i` of file `f` is a pure function of `(seed, f, i)`: JSON lines
//! `{"deviceId":"dev-0042","temperature":93.17,"danger_level":"HIGH","timestamp":"2026-01-01T00:00:01.230Z"}`
//! with 1,000 devices, temperature uniform in [20, 110) °C, `danger_level` HIGH above 90, MEDIUM
//! above 60, else LOW (≈ 22 % HIGH), and timestamps 10 ms apart in generation order starting at
//! 2026-01-01T00:00:00Z, each jittered back by up to 5 s (events arrive slightly out of order).

pub mod engines;
pub mod measure;
pub mod nexmark;
pub mod report;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Number of distinct `deviceId`s.
pub const DEVICES: u64 = 1000;
/// 2026-01-01T00:00:00Z in ms since the Unix epoch.
pub const START_MS: i64 = 1_767_225_600_000;

/// One generated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub device_id: String,
    pub temperature: f64,
    pub danger_level: &'static str,
    /// ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fixed, dependency-free hash so the data never changes
/// with a library version.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The event at `(file, row)` for `seed`, in a data set of `rows_per_file` rows per file.
pub fn event(seed: u64, file: u64, row: u64, rows_per_file: u64) -> Event {
    let index = file * rows_per_file + row;
    let h = splitmix64(seed ^ splitmix64(index));
    let device = h % DEVICES;
    // Two decimals, so the JSON text round-trips exactly.
    let temperature = 20.0 + ((h >> 10) % 9000) as f64 / 100.0;
    let jitter_ms = ((h >> 40) % 5000) as i64;
    let danger_level = if temperature > 90.0 {
        "HIGH"
    } else if temperature > 60.0 {
        "MEDIUM"
    } else {
        "LOW"
    };
    Event {
        device_id: format!("dev-{device:04}"),
        temperature,
        danger_level,
        timestamp_ms: (START_MS + index as i64 * 10 - jitter_ms).max(START_MS),
    }
}

/// RFC 3339 UTC with milliseconds, without a date library: `2026-01-01T00:00:01.230Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// The JSON line of an event (no newline).
pub fn json_line(e: &Event) -> String {
    let mut line = String::with_capacity(112);
    let _ = write!(
        line,
        "{{\"deviceId\":\"{}\",\"temperature\":{:.2},\"danger_level\":\"{}\",\"timestamp\":\"{}\"}}",
        e.device_id,
        e.temperature,
        e.danger_level,
        rfc3339_ms(e.timestamp_ms)
    );
    line
}

/// Writes `files` files of `rows` JSON lines each into `dir` as `events-00000.json`, ...; each is
/// written under a hidden name and renamed, so a running query never sees half a file.
///
/// # Errors
/// I/O errors.
pub fn write_json_files(
    dir: &Path,
    seed: u64,
    files: u64,
    rows: u64,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for file in 0..files {
        let path = dir.join(format!("events-{file:05}.json"));
        let hidden = dir.join(format!(".events-{file:05}.json.tmp"));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&hidden)?);
        for row in 0..rows {
            out.write_all(json_line(&event(seed, file, row, rows)).as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&hidden, &path)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Where generated data sets are kept: `$HOME/.cache/sluice/bench-data`.
pub fn default_cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/sluice/bench-data")
}

/// `name` in the directory of the running binary (the same cargo target profile), existing or not.
///
/// # Errors
/// The running binary's path is unknown.
pub fn sibling_binary(name: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().unwrap_or_else(|| Path::new(".")).join(name))
}

/// The marker written last into a complete cached data set (hidden from both engines' file
/// sources by its leading `_`), holding `seed files rows`.
pub const COMPLETE_MARKER: &str = "_SLUICE_BENCH_COMPLETE";

/// The data set `(seed, files, rows)` under `cache`, generated once: `cache/iot-s<seed>-<files>x<rows>`.
/// A directory without the marker (an interrupted generation) is generated again.
///
/// # Errors
/// I/O errors.
pub fn cached_data_set(cache: &Path, seed: u64, files: u64, rows: u64) -> std::io::Result<PathBuf> {
    let dir = cache.join(format!("iot-s{seed}-{files}x{rows}"));
    let marker = dir.join(COMPLETE_MARKER);
    let expected = format!("{seed} {files} {rows}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(expected.as_str()) {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    write_json_files(&dir, seed, files, rows)?;
    std::fs::write(&marker, expected)?;
    Ok(dir)
}

/// All events of a data set, in file order.
pub fn events(seed: u64, files: u64, rows: u64) -> impl Iterator<Item = Event> {
    (0..files).flat_map(move |f| (0..rows).map(move |r| event(seed, f, r, rows)))
}

/// `dir`, emptied: removed if it exists, then created.
///
/// # Errors
/// I/O errors.
pub fn fresh(dir: &Path) -> std::io::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The Python of `explicit`, else of the runner's venv `~/.cache/sluice/<venv>` when it exists.
pub fn venv_python(explicit: Option<&Path>, venv: &str) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        let python = std::env::var_os("HOME")
            .map(PathBuf::from)?
            .join(".cache/sluice")
            .join(venv)
            .join("bin/python");
        python.exists().then_some(python)
    })
}

/// `<cores> cores (<CPU model>), <memory>, Linux <kernel>, load average <1 min> at the end`, from
/// `/proc`: the machine line of every benchmark report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{cores} cores ({model}), {memory}, Linux {}, load average {load} at the end",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339_ms(START_MS), "2026-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_ms(START_MS + 86_400_000 * 59 + 1_230),
            "2026-03-01T00:00:01.230Z"
        );
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn cached_data_set_is_generated_once() {
        let cache = std::env::temp_dir().join(format!("sluice-bench-cache-{}", std::process::id()));
        let dir = cached_data_set(&cache, 3, 2, 10).expect("generates");
        let first = std::fs::read(dir.join("events-00001.json")).expect("file");
        assert_eq!(first.iter().filter(|b| **b == b'\n').count(), 10);
        // A second call reuses the files (a changed file stays changed).
        std::fs::write(dir.join("events-00000.json"), b"x").expect("write");
        let again = cached_data_set(&cache, 3, 2, 10).expect("cached");
        assert_eq!(
            std::fs::read(again.join("events-00000.json")).expect("file"),
            b"x"
        );
        // Without the marker it is generated again.
        std::fs::remove_file(dir.join(COMPLETE_MARKER)).expect("rm");
        let fresh = cached_data_set(&cache, 3, 2, 10).expect("regenerates");
        assert_ne!(
            std::fs::read(fresh.join("events-00000.json")).expect("file"),
            b"x"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn data_is_deterministic_and_levels_follow_temperature() {
        assert_eq!(event(7, 1, 2, 10), event(7, 1, 2, 10));
        assert_ne!(event(7, 1, 2, 10), event(8, 1, 2, 10));
        let all: Vec<Event> = events(1, 2, 5000).collect();
        let high = all.iter().filter(|e| e.danger_level == "HIGH").count();
        assert!((1800..2600).contains(&high), "about 22% HIGH: {high}");
        assert!(
            all.iter()
                .all(|e| (e.danger_level == "HIGH") == (e.temperature > 90.0))
        );
        let line = json_line(&all[0]);
        assert!(
            line.starts_with("{\"deviceId\":\"dev-") && line.ends_with("Z\"}"),
            "{line}"
        );
    }
}
