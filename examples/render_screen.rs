//! Renders raw terminal output (from scripts/tui_capture.py) to text with a
//! vt100 parser: the screen as it was just before the given byte count (or at the end).
//! Usage: cargo run --example render_screen -- FILE ROWS COLS [UPTO_BYTES]
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&a[1]).expect("a capture file");
    let (rows, cols): (u16, u16) = (a[2].parse().unwrap(), a[3].parse().unwrap());
    let upto = a
        .get(4)
        .and_then(|s| s.parse().ok())
        .unwrap_or(bytes.len())
        .min(bytes.len());
    let mut p = vt100::Parser::new(rows, cols, 0);
    p.process(&bytes[..upto]);
    println!("{}", p.screen().contents());
}
