//! Runs after the whole test suite: fails if any test left a mount, cgroup,
//! sandbox init process or state directory on the host.
//!
//! `warren-leak-check --baseline FILE` records what is already there before
//! the suite (for example the cgroups of a `warren serve` someone runs on
//! the machine); `warren-leak-check --since FILE` then reports only what is
//! new.

fn current() -> Vec<String> {
    let mut found = warren_testkit::leaks("warren-test");
    found.extend(warren_testkit::leaks("warren-e2e"));
    // Test runtimes use `warren-test-*` cgroup subtrees, servers started by
    // tests `warren-<hash>` (the default): after a run none may remain.
    found.extend(warren_testkit::cgroup_dirs("warren-"));
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
    found.sort();
    found.dedup();
    found
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, file] if flag == "--baseline" => {
            let now = current();
            if let Err(e) = std::fs::write(file, now.join("\n")) {
                eprintln!("leak check: cannot write {file}: {e}");
                std::process::exit(2);
            }
            if !now.is_empty() {
                println!(
                    "leak check: {} pre-existing item(s) will be ignored",
                    now.len()
                );
            }
        }
        [flag, file] if flag == "--since" => report(current(), Some(file)),
        [] => report(current(), None),
        _ => {
            eprintln!("usage: warren-leak-check [--baseline FILE | --since FILE]");
            std::process::exit(2);
        }
    }
}

fn report(mut found: Vec<String>, baseline: Option<&String>) {
    if let Some(file) = baseline {
        let before = std::fs::read_to_string(file).unwrap_or_default();
        let before: std::collections::HashSet<&str> = before.lines().collect();
        found.retain(|f| !before.contains(f.as_str()));
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
