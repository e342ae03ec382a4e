//! What the `mpirun` tests share: running this test binary's own `child` part under
//! `mpirun -n 2`, with a time limit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the test `test` of this binary under `mpirun -n 2` with `child_env` set (the ranks
/// run its child part); fails on a failed rank or past `limit`; returns what rank 0 and 1
/// printed.
pub fn under_mpirun(test: &str, child_env: &str, limit: Duration) -> String {
    let mut run = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(child_env, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI) must be installed: apt-get install openmpi-bin libopenmpi-dev");
    let start = Instant::now();
    while run.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            run.kill().unwrap();
            panic!("the ranks still run after {limit:?}: one waits forever");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
