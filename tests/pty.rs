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
