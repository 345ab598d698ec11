//! The real binary in a pseudo-terminal on the demo model; keys pressed, the
//! screen read back through a vt100 parser.

use std::time::Duration;

use crate::common;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn the_demo_model_in_a_real_terminal() {
    let model = common::demo_model();
    let mut t = common::Pty::spawn(
        env!("CARGO_BIN_EXE_mwtop"),
        &[common::path_str(&model)],
        &[],
        24,
        80,
    );
    t.wait_for(r"massive layer 11", LONG);
    t.wait_for(r"The capital of France is Paris\.", LONG);
    t.wait_for(r"original · ppl 22\.56", LONG);
    t.send(b"z");
    t.wait_for(r"zero k=2 L11 \[1229,1487\] · ppl 64\.59", LONG);
    t.send(b"r");
    t.wait_for(r"keep k=2 L11 \[1229,1487\] · ppl 25\.88", LONG);
    t.send(b"?");
    t.wait_for(r"keep only the top-k massive weights", LONG);
    t.send(b"\x1b");
    t.send(b"q");
    assert_eq!(t.wait_exit(Duration::from_secs(20)), 0);
}
