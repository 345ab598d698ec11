//! One self-contained HTML page: headings, text, tables, figures (SVG
//! inline) and texts side by side. No script, no stylesheet, font or
//! image from elsewhere: the page opens the same offline, in a mail, or
//! years later.

/// A table: a caption, a header row and rows of cells (plain text).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// What a section holds, in order.
#[derive(Debug, Clone)]
pub enum Block {
    Text(String),
    Table(Table),
    /// An SVG figure (plotters' output) and its caption.
    Figure {
        caption: String,
        svg: String,
    },
    /// Texts in columns, each under its label (generations side by side).
    Columns(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
pub struct Section {
    pub heading: String,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    /// One line under the title: what was run, where, when.
    pub subtitle: String,
    pub sections: Vec<Section>,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An SVG document as an inline element: no XML prolog, and no namespace
/// attribute (HTML parses inline SVG without one), so the page names no
/// address at all.
fn inline_svg(svg: &str) -> String {
    let start = svg.find("<svg").unwrap_or(0);
    svg[start..].replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}\
h1{margin-bottom:0}.sub{color:#666;margin-top:.3em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:1em 0}caption{text-align:left;font-weight:600;padding:.3em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555}\
.cols{display:flex;gap:1em}.cols>div{flex:1;border:1px solid #ccc;padding:.5em}\
.cols h3{margin:.2em 0 .5em}.cols pre{white-space:pre-wrap;margin:0}";

impl Report {
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str(&format!("<title>{}</title>\n", escape(&self.title)));
        h.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
        h.push_str(&format!("<h1>{}</h1>\n", escape(&self.title)));
        h.push_str(&format!(
            "<p class=\"sub\">{}</p>\n",
            escape(&self.subtitle)
        ));
        for s in &self.sections {
            h.push_str(&format!("<h2>{}</h2>\n", escape(&s.heading)));
            for b in &s.blocks {
                match b {
                    Block::Text(t) => h.push_str(&format!("<p>{}</p>\n", escape(t))),
                    Block::Table(t) => push_table(&mut h, t),
                    Block::Figure { caption, svg } => h.push_str(&format!(
                        "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>\n",
                        inline_svg(svg),
                        escape(caption)
                    )),
                    Block::Columns(cols) => {
                        h.push_str("<div class=\"cols\">\n");
                        for (label, text) in cols {
                            h.push_str(&format!(
                                "<div><h3>{}</h3><pre>{}</pre></div>\n",
                                escape(label),
                                escape(text)
                            ));
                        }
                        h.push_str("</div>\n");
                    }
                }
            }
        }
        h.push_str("</body>\n</html>\n");
        h
    }
}

fn push_table(h: &mut String, t: &Table) {
    h.push_str("<table>\n");
    if !t.caption.is_empty() {
        h.push_str(&format!("<caption>{}</caption>\n", escape(&t.caption)));
    }
    h.push_str("<tr>");
    for c in &t.header {
        h.push_str(&format!("<th>{}</th>", escape(c)));
    }
    h.push_str("</tr>\n");
    for r in &t.rows {
        h.push_str("<tr>");
        for c in r {
            h.push_str(&format!("<td>{}</td>", escape(c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_svg_inlined_without_an_address() {
        let r = Report {
            title: "a <b> & \"c\"".into(),
            subtitle: "s".into(),
            sections: vec![Section {
                heading: "h".into(),
                blocks: vec![
                    Block::Text("x < y".into()),
                    Block::Figure {
                        caption: "f".into(),
                        svg: "<?xml version=\"1.0\"?>\n<svg width=\"1\" xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>".into(),
                    },
                    Block::Columns(vec![("l".into(), "<script>".into())]),
                ],
            }],
        };
        let html = r.to_html();
        assert!(html.contains("<h1>a &lt;b&gt; &amp; &quot;c&quot;</h1>"));
        assert!(html.contains("<p>x &lt; y</p>"));
        assert!(html.contains("<svg width=\"1\"><rect/></svg>"));
        assert!(!html.contains("<?xml"));
        assert!(!html.contains("http"));
        assert!(html.contains("<pre>&lt;script&gt;</pre>"));
    }
}
