//! The real binary in a pseudo-terminal (the demo-model run is in
//! tests/real/pty.rs).

mod common;

use std::time::Duration;

#[test]
fn a_missing_model_fails_before_taking_the_screen() {
    let mut t = common::Pty::spawn(
        env!("CARGO_BIN_EXE_mwtop"),
        &["/no/such/model"],
        &[],
        24,
        80,
    );
    assert_eq!(t.wait_exit(Duration::from_secs(20)), 1);
    t.wait_for(
        r"mwtop: error: /no/such/model: no such file or directory",
        Duration::from_secs(5),
    );
}

/// SIGTERM, SIGHUP, SIGINT and the Ctrl-C key (0 stands for the key, sent
/// as byte 3 through the terminal) end the UI with the terminal given back:
/// out of the alternate screen, the cursor shown.
#[test]
fn a_terminated_ui_gives_the_terminal_back() {
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, 0] {
        let dir = common::tempdir();
        let path = dir.path().join("planted");
        mwtop::synthetic::Spec::planted()
            .write_hf_dir(&path, safetensors::Dtype::F32)
            .unwrap();
        let mut t = common::Pty::spawn(
            env!("CARGO_BIN_EXE_mwtop"),
            &[common::path_str(&path), "--device", "cpu"],
            &[],
            24,
            80,
        );
        t.wait_for(r"massive", Duration::from_secs(60));
        assert!(t.alternate_screen(), "the UI took the screen");
        if signal == 0 {
            t.send(&[3]);
        } else {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(t.pid() as i32, signal) };
        }
        assert_eq!(t.wait_exit(Duration::from_secs(20)), 0);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !t.alternate_screen(),
            "signal {signal}: still in the alternate screen"
        );
    }
}
