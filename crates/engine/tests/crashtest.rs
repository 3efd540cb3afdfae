#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A few kill -9 cycles of `bourse-crashtest` (the soak runs hundreds; see
//! `docs/reliability.md`).

#[test]
fn kill_nine_cycles_lose_no_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bourse-crashtest"))
        .args(["run", "--cycles", "4", "--seed", "7", "--writers", "3", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "crashtest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("4 cycles"), "{stdout}");
    // The workload really ran: some batches are present after the last cycle.
    let last = stdout.lines().rev().find(|l| l.starts_with("cycle 4/4")).unwrap();
    assert!(!last.ends_with("[0, 0, 0]"), "{last}");
}
