//! demo.tape must never rot: its keys are replayed into a shell running the
//! real binary in a pseudo-terminal, and each `Wait` must come true, as vhs
//! would require while recording.

use crate::common;

use std::time::Duration;

/// One step of a tape that matters for replay.
#[derive(Debug, PartialEq)]
enum Step {
    Type(String),
    Key(&'static [u8]),
    Sleep(Duration),
    Wait(String),
}

fn duration(s: &str) -> Duration {
    if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().expect("milliseconds"))
    } else {
        let secs = s.strip_suffix('s').unwrap_or(s);
        Duration::from_secs_f64(secs.parse().expect("seconds"))
    }
}

/// Parses the subset of vhs's tape language the demo uses; anything else fails the test.
fn parse(tape: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for (n, line) in tape.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let key: Option<&'static [u8]> = match cmd {
            "Enter" => Some(b"\r"),
            "Tab" => Some(b"\t"),
            "Space" => Some(b" "),
            "Backspace" => Some(b"\x7f"),
            "Escape" => Some(b"\x1b"),
            "Up" => Some(b"\x1b[A"),
            "Down" => Some(b"\x1b[B"),
            "Right" => Some(b"\x1b[C"),
            "Left" => Some(b"\x1b[D"),
            _ => None,
        };
        if let Some(k) = key {
            let times = rest.trim().parse::<usize>().unwrap_or(1);
            for _ in 0..times {
                steps.push(Step::Key(k));
            }
            continue;
        }
        match cmd {
            "Output" | "Set" | "Hide" | "Show" | "Require" => {}
            c if c == "Type" || c.starts_with("Type@") => {
                let text = rest.trim();
                assert!(
                    text.len() >= 2 && text.starts_with('"') && text.ends_with('"'),
                    "line {}: Type needs a quoted string",
                    n + 1
                );
                steps.push(Step::Type(text[1..text.len() - 1].to_string()));
            }
            "Sleep" => steps.push(Step::Sleep(duration(rest.trim()))),
            c if c == "Wait" || c.starts_with("Wait+Screen") || c.starts_with("Wait+Line") => {
                let re = rest.trim();
                assert!(
                    re.len() >= 2 && re.starts_with('/') && re.ends_with('/'),
                    "line {}: Wait needs /regex/",
                    n + 1
                );
                steps.push(Step::Wait(re[1..re.len() - 1].to_string()));
            }
            other => panic!("demo.tape line {}: unknown command {other:?}", n + 1),
        }
    }
    steps
}

#[test]
fn the_parser_reads_vhs_syntax() {
    let steps = parse("Output x.gif\nSet FontSize 16\nType \"mwtop\"\nEnter\nTab 2\nSleep 500ms\nSleep 2s\nWait+Screen /a b/\n");
    assert_eq!(
        steps,
        vec![
            Step::Type("mwtop".into()),
            Step::Key(b"\r"),
            Step::Key(b"\t"),
            Step::Key(b"\t"),
            Step::Sleep(Duration::from_millis(500)),
            Step::Sleep(Duration::from_secs(2)),
            Step::Wait("a b".into()),
        ]
    );
}

#[test]
fn demo_tape_replays_against_the_real_binary() {
    common::demo_model();
    let tape = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demo.tape")).unwrap();
    let steps = parse(&tape);
    assert!(
        steps.iter().any(|s| matches!(s, Step::Wait(_))),
        "the tape checks something"
    );
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_mwtop"))
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let mut t = common::Pty::spawn(
        "bash",
        &["--norc", "--noprofile", "-i"],
        &[("PATH", &path), ("PS1", "$ ")],
        30,
        100,
    );
    t.wait_for(r"\$ $", Duration::from_secs(10));
    for step in steps {
        match step {
            Step::Type(s) => t.send(s.as_bytes()),
            Step::Key(k) => t.send(k),
            // Sleeps are for the viewer; keep a little so keys arrive as separate presses.
            Step::Sleep(d) => std::thread::sleep(d.min(Duration::from_millis(200))),
            Step::Wait(re) => t.wait_for(&re, Duration::from_secs(120)),
        }
    }
    // The tape ends by quitting: the shell prompt is back.
    t.wait_for(r"(?m)^\$ $", Duration::from_secs(20));
}
