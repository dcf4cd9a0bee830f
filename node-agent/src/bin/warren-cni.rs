//! `warren-cni`: the CNI plugin the container runtime runs as it builds a pod's
//! sandbox. See `warren_node_agent::cni`.

use std::{io::Read as _, process::ExitCode};

use warren_node_agent::cni::plugin;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // VERSION comes with an empty stdin; anything unreadable fails to decode.
    if let Err(error) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("warren-cni: reading stdin: {error}");
    }
    let outcome = plugin::run(|key| std::env::var(key).ok(), &stdin);
    print!("{}", outcome.stdout);
    ExitCode::from(u8::try_from(outcome.exit_code).unwrap_or(1))
}
