//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the real `mwtop` binary.
pub fn mwtop(args: &[&str]) -> Output {
    mwtop_env(args, &[])
}

pub fn mwtop_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mwtop"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the mwtop binary runs")
}

/// The run failed with status 1 and one line on stderr holding every needle.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line, got: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

/// Largest |a - b| over two tensors of one shape.
pub fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The demo model, fetched through the same code `mwtop` uses. Fails (never
/// skips) when it cannot be had.
pub fn demo_model() -> PathBuf {
    mwtop::demo::ensure().unwrap_or_else(|e| panic!("the demo model is required: {e}"))
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A program running in a pseudo-terminal, its screen parsed by vt100.
pub struct Pty {
    parser: std::sync::Arc<std::sync::Mutex<vt100::Parser>>,
    writer: Box<dyn std::io::Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Pty {
    pub fn spawn(program: &str, args: &[&str], env: &[(&str, &str)], rows: u16, cols: u16) -> Self {
        use portable_pty::{native_pty_system, CommandBuilder, PtySize};
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal");
        let mut cmd = CommandBuilder::new(program);
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.cwd(env!("CARGO_MANIFEST_DIR"));
        let child = pair.slave.spawn_command(cmd).expect("the program starts");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("a reader");
        let writer = pair.master.take_writer().expect("a writer");
        let parser = std::sync::Arc::new(std::sync::Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let p = parser.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                p.lock().unwrap().process(&buf[..n]);
            }
        });
        Self {
            parser,
            writer,
            child,
            _master: pair.master,
        }
    }

    pub fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    /// Whether the program has the terminal in its alternate screen.
    pub fn alternate_screen(&self) -> bool {
        self.parser.lock().unwrap().screen().alternate_screen()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.process_id().expect("a running child")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }

    /// Waits until the screen matches `re`; panics with the screen on timeout.
    pub fn wait_for(&self, re: &str, timeout: std::time::Duration) {
        let re = regex::Regex::new(re).expect("a valid regex");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if re.is_match(&screen) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for /{re}/; screen:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for the program to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> u32 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the program did not exit; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A converted directory holds exactly the GGUF's tensors (dequantized as
/// `dtype`), configuration, vocabulary and chat template.
pub fn assert_round_trip(gguf: &Path, out: &Path, dtype: candle_core::DType) {
    let a = mwtop::checkpoint::Checkpoint::open_path(gguf).unwrap();
    let b = mwtop::checkpoint::Checkpoint::open_path(out).unwrap();
    assert_eq!(b.format(), mwtop::checkpoint::Format::Safetensors);
    assert_eq!(a.config(), b.config());
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensors() {
        let x = a
            .tensor(&t.name, dtype, &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let y = b
            .tensor(&t.name, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        assert_eq!(x.dims(), y.dims(), "{}", t.name);
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x == y, "{} differs after conversion", t.name);
    }
    let text = "<|im_start|>The 3 cafés—naïve 東京<|im_end|>";
    let ta = a
        .tokenizer()
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let tb = b
        .tokenizer()
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ta, tb);
    assert_eq!(a.chat_template(), b.chat_template());
}

/// How a run under [`mwtop_bounded`] ended.
pub struct Bounded {
    /// The exit code; None when a signal ended it (or the timeout did).
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `mwtop` binary with stdin closed, an address-space limit
/// (a memory blow-up fails fast instead of eating the machine) and a
/// timeout (a hang is killed and reported instead of hanging the suite).
pub fn mwtop_bounded(args: &[&str], timeout: std::time::Duration, address_space: u64) -> Bounded {
    use std::io::Read;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mwtop"));
    // Without RUST_BACKTRACE: with it, every error report symbolizes a
    // backtrace over the debug build's debug info (half a second a run).
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: address_space as libc::rlim_t,
                rlim_max: address_space as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("the mwtop binary starts");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = pipe(Box::new(child.stdout.take().expect("stdout piped")));
    let err = pipe(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = std::time::Instant::now() + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("waiting on mwtop") {
            break (status, false);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("the killed child is reaped"), true);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Bounded {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
