//! `profiles:` and `shaping:`: each profile resolved from the fields as written to one
//! link per direction, and the checks that span a direction's fields.

use super::MAX_PROFILE;
use super::ctx::{Ctx, Field, build, is_name, key_pos, pos};
use super::model::*;
use marked_yaml::Node;

/// `profiles:`: each profile's links, resolved per direction.
pub(super) fn parse_profiles(cx: &mut Ctx<'_>, v: &Node) -> Option<Vec<(String, Profile)>> {
    let Some(pm) = v.as_mapping() else {
        cx.push(
            pos(v),
            "profiles",
            "expected a mapping of profile names to settings, e.g. `degraded: { delay: 200ms, loss: 5% }`",
        );
        return None;
    };
    if pm.is_empty() {
        cx.push(
            pos(v),
            "profiles",
            "no profiles: add at least one, e.g. `baseline: {}`",
        );
    }
    let mut list = Vec::new();
    for (pk, pv) in pm.iter() {
        let pname = pk.as_str().to_owned();
        let path = format!("profiles.{pname}");
        if !is_name(&pname, MAX_PROFILE) {
            cx.push(
                key_pos(pk),
                &path,
                format!(
                    "invalid profile name '{pname}': use 1 to {MAX_PROFILE} characters of a-z, 0-9 and '-', starting with a letter"
                ),
            );
        }
        if let Some(p) = parse_profile(cx, pv, &path) {
            list.push((pname, p));
        }
    }
    Some(list)
}

/// One profile: its own link fields, `direction`, `up:` and `down:`, resolved per
/// direction.
fn parse_profile(cx: &mut Ctx<'_>, v: &Node, path: &str) -> Option<Profile> {
    let (own, extra) = cx.fields::<Link>(v, path, &PROFILE_KEYS)?;
    let mut direction = Direction::Both;
    let mut up: Option<(Field<'_>, Vec<Field<'_>>)> = None;
    let mut down: Option<(Field<'_>, Vec<Field<'_>>)> = None;
    for f in &extra {
        match f.name() {
            "direction" => {
                if let Some(d) = cx.de::<Direction>(f.value, &f.path) {
                    direction = d;
                }
            }
            side => {
                if let Some((good, _)) = cx.fields::<Link>(f.value, &f.path, &[]) {
                    let slot = if side == "up" { &mut up } else { &mut down };
                    *slot = Some((f.clone(), good));
                }
            }
        }
    }
    let dir_at = extra
        .iter()
        .find(|f| f.name() == "direction")
        .map(Field::at);
    match (direction, &up, &down) {
        (Direction::Up, _, Some((d, _))) => cx.push(
            dir_at.unwrap_or(d.at()),
            &format!("{path}.direction"),
            "`direction: up` leaves the down direction unshaped, but `down:` is given; remove one",
        ),
        (Direction::Down, Some((u, _)), _) => cx.push(
            dir_at.unwrap_or(u.at()),
            &format!("{path}.direction"),
            "`direction: down` leaves the up direction unshaped, but `up:` is given; remove one",
        ),
        _ => {}
    }
    let up_fields = resolve(&own, direction != Direction::Down, &up);
    let down_fields = resolve(&own, direction != Direction::Up, &down);
    check_link(cx, &up_fields);
    check_link(cx, &down_fields);
    // A trace given per direction goes to its direction.
    let (mut up, mut down): (Link, Link) = (build(v, &up_fields), build(v, &down_fields));
    up.trace = up
        .trace
        .and_then(|t| t.for_direction(true).map(TraceSpec::File));
    down.trace = down
        .trace
        .and_then(|t| t.for_direction(false).map(TraceSpec::File));
    Some(Profile { up, down })
}

/// A direction's fields: the profile's own if they shape it, each replaced by the same
/// field of the direction's own section.
fn resolve<'n>(
    own: &[Field<'n>],
    shaped: bool,
    side: &Option<(Field<'n>, Vec<Field<'n>>)>,
) -> Vec<Field<'n>> {
    let mut fields: Vec<Field<'n>> = if shaped { own.to_vec() } else { Vec::new() };
    for f in side.iter().flat_map(|(_, s)| s) {
        fields.retain(|o| o.name() != f.name());
        fields.push(f.clone());
    }
    fields
}

/// Checks that span a direction's fields; each problem points at a field as written.
fn check_link(cx: &mut Ctx<'_>, fields: &[Field<'_>]) {
    let get = |name: &str| fields.iter().find(|f| f.name() == name);
    let zero_delay = get("delay").is_none_or(|f| {
        marked_yaml::from_node::<crate::topology::units::Dur>(f.value).is_ok_and(|d| d.0.is_zero())
    });
    if let (Some(loss), Some(ge)) = (get("loss"), get("gilbert_elliott")) {
        let later = if ge.at() > loss.at() { ge } else { loss };
        cx.push(
            later.at(),
            &later.path,
            "give either `loss` (random) or `gilbert_elliott` (bursts), not both",
        );
    }
    if let (Some(rate), Some(trace)) = (get("rate"), get("trace")) {
        let later = if trace.at() > rate.at() { trace } else { rate };
        cx.push(
            later.at(),
            &later.path,
            "a trace sets the link's pace; give either `rate` or `trace`, not both",
        );
    }
    for (field, needs, message) in [
        ("distribution", "jitter", "has no effect without `jitter`"),
        ("overhead", "rate", "has no effect without `rate`"),
    ] {
        if let Some(f) = get(field)
            && get(needs).is_none()
        {
            cx.push(f.at(), &f.path, message);
        }
    }
    if let Some(f) = get("reorder")
        && zero_delay
    {
        cx.push(
            f.at(),
            &f.path,
            "reordering needs a `delay` to reorder against",
        );
    }
}

/// `shaping:`: the backend and `lab wire`'s settings; the ring's size is checked here.
pub(super) fn parse_shaping(cx: &mut Ctx<'_>, v: &Node) -> Option<Shaping> {
    let shaping = cx.section::<Shaping>(v, "shaping");
    if let Some(n) = shaping.as_ref().and_then(|s: &Shaping| s.ring_frames)
        && !ring::valid_frames(n)
    {
        let at = v
            .as_mapping()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == "ring_frames"))
            .map_or(pos(v), |(_, x)| pos(x));
        cx.push(
            at,
            "shaping.ring_frames",
            format!(
                "{n} slots: want a power of two from {} to {}, e.g. 32768 (2 KiB a slot, two rings a cell)",
                ring::MIN_FRAMES,
                ring::MAX_FRAMES
            ),
        );
    }
    shaping
}
