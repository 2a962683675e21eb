//! Runs after the whole test suite: fails if any test left a mount, cgroup,
//! sandbox init process or state directory on the host.

fn main() {
    let mut found = warren_testkit::leaks("warren-test");
    found.extend(warren_testkit::leaks("warren-e2e"));
    // Test runtimes use `warren-test-*` cgroup subtrees, servers started by
    // tests `warren-<hash>` (the default): after a run none may remain.
    found.extend(warren_testkit::cgroup_dirs("warren-"));
    found.sort();
    found.dedup();
    for dir in ["/var/tmp", "/tmp"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("warren-rt-") || name.starts_with("warren-e2e-") {
                    found.push(format!("state dir: {}", e.path().display()));
                }
            }
        }
    }
    if found.is_empty() {
        println!("leak check: clean (no stray mounts, cgroups, init processes or state dirs)");
        return;
    }
    eprintln!("leak check: {} leftover(s):", found.len());
    for f in &found {
        eprintln!("  {f}");
    }
    std::process::exit(1);
}
