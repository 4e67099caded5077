//! The collector every section reports into, and the field-by-field reading it rests on.

use super::Diagnostic;
use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use serde::de::DeserializeOwned;

/// A line and column.
pub(super) type At = (usize, usize);

/// The file being read and every problem found so far: one collector for all sections.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) out: Vec<Diagnostic>,
    /// Approach entries with a browser client: their field path, position and name,
    /// checked against the workload once it is read.
    pub(super) browsers: Vec<(String, At, String)>,
}

pub(super) fn pos(node: &Node) -> At {
    node.span()
        .start()
        .map_or((1, 1), |m| (m.line(), m.column()))
}

pub(super) fn key_pos(key: &MarkedScalarNode) -> At {
    key.span()
        .start()
        .map_or((1, 1), |m| (m.line(), m.column()))
}

/// A field as written: its key, value and dotted path.
#[derive(Clone)]
pub(super) struct Field<'a> {
    pub(super) key: &'a MarkedScalarNode,
    pub(super) value: &'a Node,
    pub(super) path: String,
}

impl Field<'_> {
    pub(super) fn name(&self) -> &str {
        self.key.as_str()
    }
    pub(super) fn at(&self) -> At {
        key_pos(self.key)
    }
}

impl Ctx<'_> {
    pub(super) fn push(&mut self, at: At, field: &str, message: impl Into<String>) {
        let d = Diagnostic {
            file: self.file.to_owned(),
            line: at.0,
            column: at.1,
            field: field.to_owned(),
            message: message.into(),
        };
        // A link check on a field that both directions inherit fires twice.
        if !self.out.contains(&d) {
            self.out.push(d);
        }
    }

    /// Deserializes one node, recording its error. `also` lists keys the caller accepts
    /// besides `T`'s fields, for the list of valid fields in an "unknown field" message.
    pub(super) fn de_with<T: DeserializeOwned>(
        &mut self,
        node: &Node,
        field: &str,
        also: &[&str],
    ) -> Option<T> {
        match marked_yaml::from_node::<T>(node) {
            Ok(v) => Some(v),
            Err(e) => {
                let sub = e
                    .path()
                    .filter(|p| !p.is_empty() && *p != ".")
                    .map(str::to_owned);
                let inner = e.into_inner();
                let at = inner
                    .start_mark()
                    .map_or(pos(node), |m| (m.line(), m.column()));
                let field = match sub {
                    Some(s) => format!("{field}.{s}"),
                    None => field.to_owned(),
                };
                self.push(at, &field, describe(&inner, also));
                None
            }
        }
    }

    pub(super) fn de<T: DeserializeOwned>(&mut self, node: &Node, field: &str) -> Option<T> {
        self.de_with(node, field, &[])
    }

    /// Checks a section of optional fields one field at a time: each bad field is
    /// reported, and the good ones are returned. Keys in `also` are returned unchecked,
    /// for the caller. None if the node is not a mapping.
    pub(super) fn fields<'n, T: DeserializeOwned>(
        &mut self,
        node: &'n Node,
        path: &str,
        also: &[&str],
    ) -> Option<(Vec<Field<'n>>, Vec<Field<'n>>)> {
        let Some(map) = node.as_mapping() else {
            self.push(pos(node), path, "expected a mapping of fields");
            return None;
        };
        let (mut good, mut extra) = (Vec::new(), Vec::new());
        for (k, v) in map.iter() {
            let f = Field {
                key: k,
                value: v,
                path: format!("{path}.{}", k.as_str()),
            };
            if also.contains(&k.as_str()) {
                extra.push(f);
                continue;
            }
            let one = mapping(node, std::slice::from_ref(&f));
            if self.de_with::<T>(&one, path, also).is_some() {
                good.push(f);
            }
        }
        Some((good, extra))
    }

    /// A section of optional fields, built from the fields that pass; every bad field is
    /// reported. None if the node is not a mapping.
    pub(super) fn section<T: DeserializeOwned + Default>(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<T> {
        let (good, _) = self.fields::<T>(node, path, &[])?;
        Some(build(node, &good))
    }
}

/// A mapping node of `fields`, at `at`'s position.
pub(super) fn mapping(at: &Node, fields: &[Field<'_>]) -> Node {
    let mut m = MarkedMappingNode::new_empty(*at.span());
    for f in fields {
        m.insert(f.key.clone(), f.value.clone());
    }
    Node::Mapping(m)
}

/// Builds `T` from fields that each deserialized on their own.
pub(super) fn build<T: DeserializeOwned + Default>(at: &Node, fields: &[Field<'_>]) -> T {
    // Each field passed alone and none depends on another, so this cannot fail; the
    // default is a fallback that no test has seen.
    marked_yaml::from_node(&mapping(at, fields)).unwrap_or_default()
}

fn describe(e: &marked_yaml::Error, also: &[&str]) -> String {
    use marked_yaml::Error::*;
    match e {
        UnknownFieldError(name, valid, _) => {
            let mut all: Vec<&str> = valid.to_vec();
            // A field handled by the caller may be a field of the struct too.
            all.extend(also.iter().filter(|a| !valid.contains(a)));
            format!("unknown field '{name}'; valid fields: {}", all.join(", "))
        }
        NotBoolean(_) => "expected true or false".into(),
        IntegerParseFailure(err, _) => format!("expected a whole number ({err})"),
        FloatParseFailure(err, _) => format!("expected a number ({err})"),
        Other(msg, _) => msg
            .replace("unknown variant", "unknown value")
            .replace("expected one of", "valid:")
            .replace(", expected ", ", valid: "),
    }
}

/// A lab, profile or approach name: a-z, 0-9 and '-', starting with a letter, at most `max`.
pub(super) fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.ends_with('-')
}
