//! Hub ids through hf-hub against a local HTTP server that answers the hub's
//! URLs (`{endpoint}/{id}/resolve/{revision}/{file}` with ETag, X-Repo-Commit
//! and Range support), then offline use of what was cached.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mwtop::synthetic::Spec;
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct FakeHub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
}

/// Serves every file of `dir` as repo `id`; anything else is a 404.
fn serve(id: &str, dir: &Path) -> FakeHub {
    let mut files = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        files.insert(
            format!("/{id}/resolve/main/{name}"),
            std::fs::read(&p).unwrap(),
        );
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range_start = 0usize;
            let mut range_end: Option<usize> = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range_start = a.parse().unwrap();
                    range_end = b.parse().ok();
                }
            }
            let response = match files.get(&path) {
                Some(body) => {
                    let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                    let part = &body[range_start.min(body.len())..=end];
                    let etag = format!("{:x}", Sha256::digest(body));
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                        part.len(), range_start, end, body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(part);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    FakeHub { endpoint, requests }
}

#[test]
fn hub_id_downloads_into_the_standard_cache_then_works_offline() {
    let tmp = common::tempdir();
    let repo_dir = tmp.path().join("served");
    Spec::default()
        .write_hf_dir_sharded(&repo_dir, safetensors::Dtype::F32, 2)
        .unwrap();
    let hub = serve("test-org/tiny-llama", &repo_dir);
    let cache = tmp.path().join("hub-cache");
    let home = tmp.path().join("hf-home");
    let cache_s = common::path_str(&cache);
    let home_s = common::path_str(&home);

    let online = common::mwtop_env(
        &["inspect", "test-org/tiny-llama", "--json"],
        &[
            ("HF_ENDPOINT", &hub.endpoint),
            ("HF_HUB_CACHE", cache_s),
            ("HF_HOME", home_s),
        ],
    );
    assert!(online.status.success(), "{}", common::stderr(&online));
    let report: serde_json::Value = serde_json::from_slice(&online.stdout).unwrap();
    assert_eq!(report["config"]["d_model"], 256);
    assert_eq!(report["tensors"].as_array().unwrap().len(), 20);
    let source = report["source"].as_str().unwrap();
    assert!(
        source.starts_with(cache_s) && source.contains("models--test-org--tiny-llama/snapshots/"),
        "{source}"
    );
    let snapshot = Path::new(source);
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(snapshot.join(f).exists(), "{f} cached");
    }
    assert!(hub.requests.load(Ordering::SeqCst) >= 10);

    // Offline: only the cache is used, and the result is the same.
    let before = hub.requests.load(Ordering::SeqCst);
    let offline = common::mwtop_env(
        &["inspect", "test-org/tiny-llama", "--json"],
        &[
            ("HF_ENDPOINT", &hub.endpoint),
            ("HF_HUB_CACHE", cache_s),
            ("HF_HOME", home_s),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert!(offline.status.success(), "{}", common::stderr(&offline));
    assert_eq!(offline.stdout, online.stdout);
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        before,
        "offline made no request"
    );

    // Offline and not cached: one clear line.
    let missing = common::mwtop_env(
        &["inspect", "test-org/not-cached"],
        &[
            ("HF_HUB_CACHE", cache_s),
            ("HF_HOME", home_s),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    common::assert_one_line_error(&missing, &["test-org/not-cached", "not in the cache"]);
}

#[test]
fn hub_home_variable_places_the_cache() {
    // HF_HOME without HF_HUB_CACHE: files land under $HF_HOME/hub, as huggingface_hub does.
    let tmp = common::tempdir();
    let repo_dir = tmp.path().join("served");
    Spec::default()
        .write_hf_dir(&repo_dir, safetensors::Dtype::F16)
        .unwrap();
    let hub = serve("org2/single", &repo_dir);
    let home = tmp.path().join("home");
    let out = common::mwtop_env(
        &["inspect", "org2/single", "--json"],
        &[
            ("HF_ENDPOINT", &hub.endpoint),
            ("HF_HOME", common::path_str(&home)),
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(home
        .join("hub/models--org2--single/snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
}

#[test]
fn unreachable_hub_is_one_clear_line() {
    let tmp = common::tempdir();
    let out = common::mwtop_env(
        &["inspect", "org/unreachable"],
        &[
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_HUB_CACHE", common::path_str(tmp.path())),
            ("HF_HOME", common::path_str(tmp.path())),
        ],
    );
    common::assert_one_line_error(&out, &["org/unreachable", "config.json"]);
}
