//! report.html: the report as one self-contained page, with the tables, the plots
//! embedded, and a note on how to read them. Pure.

use crate::metrics::Run;
use pulldown_cmark::{Options, Parser, html};

const HOW_TO_READ: &str = "\
<details open><summary>How to read this report</summary>
<ul>
<li><b>Cells.</b> Each approach runs under each profile (a set of link impairments) in a cell of its own: a client namespace, a shaped link, a server namespace. The same prompts go through every cell.</li>
<li><b>TTFT</b> is the time from sending a prompt to its first token, as the client sees it, so it includes connection set-up when the connection mode is <code>fresh</code>. <b>TBT</b> is the mean gap between tokens of one answer. Times are in milliseconds.</li>
<li><b>Wire B/tok</b> is every byte captured at the client's interface in both directions (Ethernet frames, handshakes, ACKs and retransmissions included) divided by the tokens received. <b>L3 B/tok</b> leaves out the Ethernet headers.</li>
<li><b>Anatomy</b> splits those bytes by layer (IP, TCP/UDP, TLS/QUIC, HTTP, message framing, payload, ...) and the packets by class (data, pure ACK, other); each row adds up to its B/tok. Where two approaches differ, the largest layer differences are named under the table.</li>
<li><b>Link behaviour</b> sets what each link was configured to do against what the captures at both ends saw; <b>Capture cross-check</b> sets the capture against the kernel's own counters.</li>
<li><b>Plots.</b> ttft.svg is the distribution of TTFT (a CDF: the share of prompts whose first token came by a time); bytes_per_token.svg and anatomy.svg compare the approaches' bytes per token; timeline.svg shows when each token of one prompt arrived.</li>
</ul>
</details>
";

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}
th:first-child,td:first-child{text-align:left}
thead{background:#f2f2f2}
tbody tr:nth-child(even){background:#fafafa}
code{background:#f4f4f4;padding:0 0.2em}
figure{margin:1.5em 0}
figure svg{max-width:100%;height:auto}
figcaption{font-weight:bold;margin-bottom:0.4em}
details{background:#f7f9fc;border:1px solid #dde3ec;padding:0.5em 1em;margin:1em 0}
";

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: `report_md` (the tables, as `lab report` prints them) rendered to HTML,
/// the note on reading it, and each plot inline.
pub fn page(run: &Run, report_md: &str, plots: &[(&str, String)]) -> String {
    let mut body = String::new();
    // Raw HTML in the markdown (from names in a topology) is shown as text.
    let events = Parser::new_ext(report_md, Options::ENABLE_TABLES).map(|e| match e {
        pulldown_cmark::Event::Html(h) | pulldown_cmark::Event::InlineHtml(h) => {
            pulldown_cmark::Event::Text(h)
        }
        e => e,
    });
    html::push_html(&mut body, events);
    // The how-to-read note goes after the title and the first paragraph.
    let at = body.find("</p>").map_or(0, |i| i + 4);
    body.insert_str(at, HOW_TO_READ);
    let mut figures = String::from("<h2 id=\"plots\">Plots</h2>\n");
    for (name, svg) in plots {
        // Each SVG is embedded as it is: a document of lab's own, from plotters.
        let svg = svg
            .find("<svg")
            .map_or(svg.as_str(), |i| &svg[i..])
            .to_owned();
        figures.push_str(&format!(
            "<figure><figcaption>{}</figcaption>\n{svg}\n</figure>\n",
            escape(name)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>lab run: {}</title><style>{STYLE}</style></head>\n<body>\n{body}\n{figures}</body></html>\n",
        escape(&run.name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_stays_text() {
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
