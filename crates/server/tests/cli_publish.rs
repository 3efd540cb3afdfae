//! `bourse publish`: publishes over iceoryx2 while writing samples, a subscriber in
//! this process reads them, and it stops cleanly on SIGTERM with a verifiable store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bourse_bus::ipc::{IpcStart, IpcSubscribeOptions, IpcSubscriber};
use bourse_bus::Message;

#[test]
fn publish_serves_another_process_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let instance = format!("cli-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_bourse"))
        .args(["publish", "--data", data.to_str().unwrap(), "--instance", &instance])
        .args(["--rate", "2000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Connect once the bridge's services exist.
    let t = Instant::now();
    let mut sub = loop {
        let opts = IpcSubscribeOptions::new(&instance).start(IpcStart::Lsn(1));
        match IpcSubscriber::connect(opts) {
            Ok(s) => break s,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(30), "no bridge: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let mut next = 1;
    while next <= 1000 {
        if let Some(Message::Event(d)) = sub.next(Duration::from_secs(5)).unwrap() {
            assert_eq!(d.lsn, next, "in order, from the first");
            d.event().unwrap();
            next += 1;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "stuck at {next}");
    }
    drop(sub);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "publish did not stop cleanly: {status}");
    let out = Command::new(env!("CARGO_BIN_EXE_bourse"))
        .args(["verify", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
