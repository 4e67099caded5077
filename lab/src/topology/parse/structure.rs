//! What the YAML loader refuses without saying where: found on the parser's events.

use super::ctx::At;

/// What the YAML loader refuses without saying where in the topology: a second document,
/// a tag, a duplicate key. Found by walking the parser's events with the field path at
/// hand; empty if the text does not even scan (the loader then says why).
pub(super) fn structure(text: &str) -> Vec<(At, String, String)> {
    use yaml_rust2::parser::{Event, Parser};
    enum Frame {
        Map {
            path: String,
            seen: Vec<(String, usize)>,
            key: Option<String>,
        },
        Seq {
            path: String,
            next: usize,
        },
    }
    let mut out = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents = 0;
    let mut parser = Parser::new(text.chars());
    let join = |base: &str, key: &str| {
        if base.is_empty() {
            key.to_owned()
        } else {
            format!("{base}.{key}")
        }
    };
    loop {
        let Ok((ev, mark)) = parser.next_token() else {
            return out;
        };
        let at = (mark.line(), mark.col() + 1);
        // The path of the value this event is, if it is a value.
        let value_path = |stack: &mut Vec<Frame>| -> String {
            match stack.last_mut() {
                Some(Frame::Map { path, key, .. }) => {
                    let k = key.take().unwrap_or_default();
                    join(path, &k)
                }
                Some(Frame::Seq { path, next }) => {
                    *next += 1;
                    format!("{path}[{}]", *next - 1)
                }
                None => String::new(),
            }
        };
        let tagged = |out: &mut Vec<_>, tag: &Option<yaml_rust2::parser::Tag>, path: &str| {
            if let Some(t) = tag {
                let handle = match t.handle.as_str() {
                    "tag:yaml.org,2002:" => "!!",
                    h => h,
                };
                out.push((
                    at,
                    path.to_owned(),
                    format!(
                        "YAML tags such as `{handle}{}` are not read; write the value alone",
                        t.suffix
                    ),
                ));
            }
        };
        match ev {
            Event::StreamEnd => return out,
            Event::DocumentStart => {
                documents += 1;
                if documents == 2 {
                    out.push((
                        at,
                        String::new(),
                        "a second YAML document starts here, and lab reads one; remove the `---` and what follows, or put it in a file of its own".to_owned(),
                    ));
                }
            }
            Event::Scalar(value, _, _, tag) => {
                let is_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    if let Some(Frame::Map { path, seen, key }) = stack.last_mut() {
                        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == value) {
                            out.push((
                                at,
                                join(path, &value),
                                format!(
                                    "`{value}` is given twice (first on line {first}); remove one"
                                ),
                            ));
                        }
                        seen.push((value.clone(), at.0));
                        let p = join(path, &value);
                        tagged(&mut out, &tag, &p);
                        *key = Some(value);
                    }
                } else {
                    let p = value_path(&mut stack);
                    tagged(&mut out, &tag, &p);
                }
            }
            Event::MappingStart(_, tag) => {
                let p = value_path(&mut stack);
                tagged(&mut out, &tag, &p);
                stack.push(Frame::Map {
                    path: p,
                    seen: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceStart(_, tag) => {
                let p = value_path(&mut stack);
                tagged(&mut out, &tag, &p);
                stack.push(Frame::Seq { path: p, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
}
