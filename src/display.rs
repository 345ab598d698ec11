//! How numbers and attacks read, the same in the UI and on the command line.

use crate::analysis::attack::{Attack, AttackMode};

/// Perplexities span 10 to 1e5: two decimals, scientific when huge.
pub fn format_ppl(p: f64) -> String {
    if !p.is_finite() {
        "inf".into()
    } else if p >= 1e5 {
        format!("{p:.2e}")
    } else {
        format!("{p:.2}")
    }
}

/// Short human form of a count: 134.5M, 70.6B.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// "zero k=2 on layer 11 (dims 1229,1487)".
pub fn describe_attack(a: &Attack) -> String {
    let dims: Vec<String> = a.dims.iter().take(6).map(usize::to_string).collect();
    let more = if a.dims.len() > 6 { ",..." } else { "" };
    let base = match a.mode {
        AttackMode::Original => "original".into(),
        AttackMode::Super => String::from("super weight zeroed"),
        m => format!(
            "{m} k={} on layer {} (dims {}{more})",
            a.k,
            a.layer,
            dims.join(",")
        ),
    };
    let edits: Vec<String> = a
        .edits
        .iter()
        .map(|e| format!("{}[{}, {}] = {}", e.tensor, e.row, e.col, e.value))
        .collect();
    if edits.is_empty() {
        base
    } else if a.mode == AttackMode::Super && a.edits.len() == 1 {
        format!(
            "super weight {} zeroed",
            &edits[0][..edits[0].rfind(" = ").unwrap_or(0)]
        )
    } else {
        format!("{base} + {}", edits.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_the_tables_print_them() {
        assert_eq!(format_ppl(22.5551), "22.56");
        assert_eq!(format_ppl(123456.0), "1.23e5");
        assert_eq!(format_ppl(f64::INFINITY), "inf");
        assert_eq!(human_count(134_515_008), "134.5M");
        assert_eq!(human_count(69_000_000_000), "69.00B");
        let a = Attack::new(AttackMode::Zero, 11, &[1229, 1487, 3], 2, 1536, 0);
        assert_eq!(describe_attack(&a), "zero k=2 on layer 11 (dims 1229,1487)");
    }
}
