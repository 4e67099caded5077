//! Tables as lab prints them, in Markdown: from rows that derive `Tabled` ([`markdown`])
//! or from a header and rows of cells pushed one by one ([`grid`]). Every table of
//! `lab plan`, `lab status`, `lab report`, `lab compare` and the benches is made here,
//! so they all look alike. Pure.

use tabled::settings::Style;

/// Rows that derive `Tabled`, as a Markdown table (the header from their field names).
pub fn markdown<T: tabled::Tabled>(rows: impl IntoIterator<Item = T>) -> String {
    tabled::Table::new(rows).with(Style::markdown()).to_string()
}

/// A table pushed row by row (the first row its header), as a Markdown table.
pub fn grid(rows: tabled::builder::Builder) -> String {
    rows.build().with(Style::markdown()).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_kinds_of_table_are_the_same_markdown() {
        #[derive(tabled::Tabled)]
        struct Row {
            #[tabled(rename = "Approach")]
            a: &'static str,
            #[tabled(rename = "Tokens")]
            n: u32,
        }
        let derived = super::markdown([Row { a: "sse", n: 10 }, Row { a: "wt", n: 9 }]);
        let mut b = tabled::builder::Builder::default();
        b.push_record(["Approach", "Tokens"]);
        b.push_record(["sse", "10"]);
        b.push_record(["wt", "9"]);
        assert_eq!(derived, super::grid(b));
        assert_eq!(
            derived,
            "| Approach | Tokens |\n|----------|--------|\n| sse      | 10     |\n| wt       | 9      |"
        );
    }
}
