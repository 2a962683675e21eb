//! The standalone sandbox init: a small binary the node prefers over
//! re-executing itself (it starts faster and maps less memory per sandbox).
//! The node copies it into a sealed memfd before use, like its own binary.

fn main() {
    warren_init::run_if_init();
    eprintln!(
        "warren-init is started by the Warren node as PID 1 of a sandbox; it takes no arguments"
    );
    std::process::exit(2);
}
