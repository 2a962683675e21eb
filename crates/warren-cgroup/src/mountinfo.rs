//! A parser for `/proc/<pid>/mountinfo`, used to find where cgroup
//! hierarchies are mounted.
//!
//! Line format (see proc(5)):
//! `id parent major:minor root mount-point options [optional...] - fstype source super-options`

use std::path::PathBuf;

/// One mount from the mount table (only the fields this crate needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Where the filesystem is mounted, with octal escapes decoded.
    pub mount_point: PathBuf,
    /// The filesystem type, e.g. `cgroup` or `cgroup2`.
    pub fstype: String,
    /// The per-superblock options; for cgroup v1 these name the controllers.
    pub super_options: Vec<String>,
}

/// Parses a whole mount table. Malformed lines are skipped (and logged),
/// since one odd line must not hide the cgroup mounts.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let entry = parse_line(line);
            if entry.is_none() {
                tracing::debug!(line, "skipping malformed mountinfo line");
            }
            entry
        })
        .collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    // The separator follows the six fixed fields and any optional fields.
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let mount_point = unescape(fields.get(4)?)?;
    if !mount_point.starts_with('/') {
        return None;
    }
    Some(MountEntry {
        mount_point: PathBuf::from(mount_point),
        fstype: (*fields.get(sep + 1)?).to_owned(),
        super_options: fields.get(sep + 3)?.split(',').map(str::to_owned).collect(),
    })
}

/// Decodes the kernel's `\ooo` octal escapes (used for space, tab, newline
/// and backslash). Returns `None` for a malformed escape.
fn unescape(field: &str) -> Option<String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4)?;
            if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return None;
            }
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:10 master:3 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn parses_cgroup_mounts_with_optional_fields() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[1].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].super_options, vec!["rw", "cpu", "cpuacct"]);
        assert_eq!(m[2].super_options, vec!["rw", "memory"]);
        assert_eq!(m[4].fstype, "cgroup2");
    }

    #[test]
    fn decodes_escapes_and_skips_garbage() {
        let text = "\
1 0 0:1 / /a\\040b\\134c rw - cgroup cgroup rw,pids
garbage
2 0 0:2 / /x rw no-separator here at all
3 0 0:3 / /bad\\04 rw - cgroup cgroup rw,cpu
4 0 0:4 / relative rw - cgroup cgroup rw,cpu

5 0 0:5 / /ok rw - cgroup2 cgroup2
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].mount_point, PathBuf::from("/a b\\c"));
        assert_eq!(m[0].super_options, vec!["rw", "pids"]);
    }

    #[test]
    fn truncated_and_mangled_lines_never_panic() {
        // A cheap exhaustive stand-in for fuzzing: every prefix of every
        // line, and every line with one field dropped.
        for line in HYBRID.lines() {
            for end in 0..=line.len() {
                let _ = parse_mountinfo(&line[..end]);
            }
            let fields: Vec<&str> = line.split(' ').collect();
            for skip in 0..fields.len() {
                let mangled: Vec<&str> = fields
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, f)| *f)
                    .collect();
                let _ = parse_mountinfo(&mangled.join(" "));
            }
        }
        for odd in ["\\\\", "\\", "\\0", "\\777", "1 2 3 4 \\777 6 - a b c"] {
            let _ = parse_mountinfo(odd);
        }
    }

    #[test]
    fn real_mountinfo_parses_if_present() {
        // Smoke test against the host's table: must not panic, and every
        // entry has an absolute mount point.
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            for e in parse_mountinfo(&text) {
                assert!(e.mount_point.is_absolute());
            }
        }
    }
}
