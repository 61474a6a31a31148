//! Three-way merge of UCI packages (issue 11, item 2): a configuration file both nodes changed
//! since their last common generation.
//!
//! Named sections are matched by name. Anonymous ones (firewall rules, redirects: what
//! `uci add` makes) have no identity, so each side's are matched to the base's of the same
//! type: equal content first, then the one sharing the most option values, in order; one
//! left over is an addition (or, in the base, a deletion). Within a section each option is
//! merged on its own: the side that changed it wins; both changing it alike is no conflict;
//! lists both changed merge as item sets (removals from either, then additions of ours, then
//! of theirs). Anything else both changed is a [`Conflict`]: `theirs` (the authority) wins,
//! and the conflict carries the three values so that nothing is lost without a trace.

use crate::uci::{Package, Section, UciError, Value};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A change both sides made differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The section's name, or `@type[index]` for an anonymous one (uci's notation).
    pub section: String,
    /// `None`: the section as a whole (deleted on one side, changed on the other; or its type).
    pub option: Option<String>,
    pub base: Option<Value>,
    pub ours: Option<Value>,
    pub theirs: Option<Value>,
}

/// A merge's result: the package (theirs' values where they conflicted) and the conflicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub package: Package,
    pub conflicts: Vec<Conflict>,
}

/// Where a section of one side sits in the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// The base's section at this index.
    Base(usize),
    /// New on this side.
    New,
}

/// Maps each section of `side` to the base section it is (by name; anonymous ones by content).
fn match_sections(base: &Package, side: &Package) -> Vec<Key> {
    let mut taken = vec![false; base.sections.len()];
    let mut keys = vec![Key::New; side.sections.len()];
    for (i, s) in side.sections.iter().enumerate() {
        if let Some(n) = &s.name {
            if let Some(j) = base
                .sections
                .iter()
                .position(|b| b.name.as_deref() == Some(n))
            {
                taken[j] = true;
                keys[i] = Key::Base(j);
            }
        }
    }
    let anon = |s: &Section| s.name.is_none();
    // Equal content first: an unchanged rule keeps its identity whatever moved around it.
    for (i, s) in side.sections.iter().enumerate().filter(|(_, s)| anon(s)) {
        if let Some(j) = (0..base.sections.len())
            .find(|&j| !taken[j] && anon(&base.sections[j]) && base.sections[j] == *s)
        {
            taken[j] = true;
            keys[i] = Key::Base(j);
        }
    }
    for (i, s) in side.sections.iter().enumerate().filter(|(_, s)| anon(s)) {
        if keys[i] != Key::New {
            continue;
        }
        let common = |b: &Section| b.options.iter().filter(|o| s.options.contains(o)).count();
        let best = (0..base.sections.len())
            .filter(|&j| !taken[j] && anon(&base.sections[j]) && base.sections[j].kind == s.kind)
            .map(|j| (common(&base.sections[j]), j))
            .filter(|(c, _)| *c > 0)
            // The most in common; the first such on a tie.
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        if let Some((_, j)) = best {
            taken[j] = true;
            keys[i] = Key::Base(j);
        }
    }
    keys
}

/// uci's name for a section of `p`.
fn label(p: &Package, i: usize) -> String {
    let s = &p.sections[i];
    match &s.name {
        Some(n) => n.clone(),
        None => {
            let idx = p.sections[..i].iter().filter(|o| o.kind == s.kind).count();
            format!("@{}[{idx}]", s.kind)
        }
    }
}

/// Merges two lists both sides changed: base order kept minus what either removed, then
/// ours' additions, then theirs'.
fn merge_lists(base: &[String], ours: &[String], theirs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base
        .iter()
        .filter(|v| ours.contains(v) && theirs.contains(v))
        .cloned()
        .collect();
    for v in ours.iter().chain(theirs) {
        if !base.contains(v) && !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

fn merge_value(b: Option<&Value>, o: Option<&Value>, t: Option<&Value>) -> (Option<Value>, bool) {
    if o == b {
        return (t.cloned(), false);
    }
    if t == b || o == t {
        return (o.cloned(), false);
    }
    let base_list: Option<&[String]> = match b {
        None => Some(&[]),
        Some(Value::List(l)) => Some(l.as_slice()),
        Some(Value::Single(_)) => None,
    };
    if let (Some(bl), Some(Value::List(ol)), Some(Value::List(tl))) = (base_list, o, t) {
        let l = merge_lists(bl, ol, tl);
        return ((!l.is_empty()).then_some(Value::List(l)), false);
    }
    (t.cloned(), true)
}

/// Merges one section present on all three sides.
fn merge_section(
    b: &Section,
    o: &Section,
    t: &Section,
    name: &str,
    conflicts: &mut Vec<Conflict>,
) -> Section {
    let kind = if o.kind == b.kind || o.kind == t.kind {
        t.kind.clone()
    } else if t.kind == b.kind {
        o.kind.clone()
    } else {
        conflicts.push(Conflict {
            section: name.to_string(),
            option: None,
            base: Some(Value::Single(b.kind.clone())),
            ours: Some(Value::Single(o.kind.clone())),
            theirs: Some(Value::Single(t.kind.clone())),
        });
        t.kind.clone()
    };
    let mut names: Vec<&String> = t.options.iter().map(|(n, _)| n).collect();
    for (n, _) in o.options.iter().chain(&b.options) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut options = Vec::new();
    for n in names {
        let (bv, ov, tv) = (b.value(n), o.value(n), t.value(n));
        let (v, conflict) = merge_value(bv, ov, tv);
        if conflict {
            conflicts.push(Conflict {
                section: name.to_string(),
                option: Some(n.clone()),
                base: bv.cloned(),
                ours: ov.cloned(),
                theirs: tv.cloned(),
            });
        }
        if let Some(v) = v {
            options.push((n.clone(), v));
        }
    }
    Section {
        kind,
        name: t.name.clone(),
        options,
    }
}

/// Three-way merge at section, option and list level; on a conflict `theirs` wins and the
/// conflict is listed.
pub fn merge3(base: &Package, ours: &Package, theirs: &Package) -> Merged {
    let done = |p: &Package| Merged {
        package: p.clone(),
        conflicts: Vec::new(),
    };
    if theirs == base || ours == theirs {
        return done(ours);
    }
    if ours == base {
        return done(theirs);
    }
    let ok = match_sections(base, ours);
    let tk = match_sections(base, theirs);
    let find = |keys: &[Key], j: usize| keys.iter().position(|k| *k == Key::Base(j));
    let mut conflicts = Vec::new();
    let mut sections = Vec::new();
    for (j, b) in base.sections.iter().enumerate() {
        match (find(&ok, j), find(&tk, j)) {
            (Some(oi), Some(ti)) => {
                let name = label(theirs, ti);
                sections.push(merge_section(
                    b,
                    &ours.sections[oi],
                    &theirs.sections[ti],
                    &name,
                    &mut conflicts,
                ));
            }
            // Deleted by theirs: gone, unless ours changed it meanwhile (then theirs still
            // wins, and the conflict says what ours had).
            (Some(oi), None) => {
                if ours.sections[oi] != *b {
                    conflicts.push(Conflict {
                        section: label(ours, oi),
                        option: None,
                        base: None,
                        ours: None,
                        theirs: None,
                    });
                }
            }
            (None, Some(ti)) => {
                if theirs.sections[ti] != *b {
                    conflicts.push(Conflict {
                        section: label(theirs, ti),
                        option: None,
                        base: None,
                        ours: None,
                        theirs: None,
                    });
                    sections.push(theirs.sections[ti].clone());
                }
            }
            (None, None) => {}
        }
    }
    // Added on both sides under one name: merged as if the base had it empty.
    let new_theirs: Vec<usize> = (0..theirs.sections.len())
        .filter(|&i| tk[i] == Key::New)
        .collect();
    let mut merged_named = Vec::new();
    for (i, s) in ours.sections.iter().enumerate() {
        if ok[i] != Key::New {
            continue;
        }
        let twin = s.name.as_ref().and_then(|n| {
            new_theirs
                .iter()
                .copied()
                .find(|&ti| theirs.sections[ti].name.as_ref() == Some(n))
        });
        match twin {
            Some(ti) => {
                let t = &theirs.sections[ti];
                let empty = Section {
                    kind: t.kind.clone(),
                    name: t.name.clone(),
                    options: Vec::new(),
                };
                let name = label(theirs, ti);
                sections.push(merge_section(&empty, s, t, &name, &mut conflicts));
                merged_named.push(ti);
            }
            None => sections.push(s.clone()),
        }
    }
    for ti in new_theirs {
        if !merged_named.contains(&ti) {
            sections.push(theirs.sections[ti].clone());
        }
    }
    Merged {
        package: Package { sections },
        conflicts,
    }
}

/// [`merge3`] on file texts (`path` names them in parse errors): the merged file as `uci
/// commit` writes it, and the conflicts.
pub fn merge3_text(
    base: &str,
    ours: &str,
    theirs: &str,
    path: &Path,
) -> Result<(String, Vec<Conflict>), UciError> {
    let b = Package::parse(base, path)?;
    let o = Package::parse(ours, path)?;
    let t = Package::parse(theirs, path)?;
    let m = merge3(&b, &o, &t);
    Ok((m.package.render(), m.conflicts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn parse(text: &str) -> Package {
        Package::parse(text, Path::new("test")).unwrap()
    }

    const FIREWALL: &str = "
config defaults
\toption input 'ACCEPT'

config zone 'lan'
\toption name 'lan'
\tlist network 'lan'

config rule
\toption name 'Allow-DHCP'
\toption src 'wan'
\toption target 'ACCEPT'

config rule
\toption name 'Allow-Ping'
\toption src 'wan'
\toption target 'ACCEPT'
";

    #[test]
    fn rules_added_on_each_side_are_both_kept() {
        let base = parse(FIREWALL);
        let mut ours = base.clone();
        ours.add_section("rule")
            .unwrap()
            .set("name", "Allow-SSH")
            .unwrap();
        let mut theirs = base.clone();
        theirs
            .add_section("rule")
            .unwrap()
            .set("name", "Allow-VPN")
            .unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
        let names: Vec<_> = m
            .package
            .sections_of_kind("rule")
            .filter_map(|s| s.get("name"))
            .collect();
        assert_eq!(
            names,
            ["Allow-DHCP", "Allow-Ping", "Allow-SSH", "Allow-VPN"]
        );
    }

    #[test]
    fn same_option_changed_differently_is_a_conflict_theirs_wins() {
        let base = parse(FIREWALL);
        let mut ours = base.clone();
        ours.set("lan", "name", "inside").unwrap();
        ours.add_list("lan", "network", "guest").unwrap();
        let mut theirs = base.clone();
        theirs.set("lan", "name", "trusted").unwrap();
        theirs.sections[2].set("target", "DROP").unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package.get("lan", "name"), Some("trusted"));
        assert_eq!(m.package.get_list("lan", "network"), ["lan", "guest"]);
        assert_eq!(m.package.sections[2].get("target"), Some("DROP"));
        assert_eq!(
            m.conflicts,
            [Conflict {
                section: "lan".into(),
                option: Some("name".into()),
                base: Some(Value::Single("lan".into())),
                ours: Some(Value::Single("inside".into())),
                theirs: Some(Value::Single("trusted".into())),
            }]
        );
    }

    #[test]
    fn section_deleted_on_one_side_and_edited_on_the_other_is_a_conflict() {
        let base = parse(FIREWALL);
        let mut ours = base.clone();
        ours.sections[3].set("target", "DROP").unwrap();
        let mut theirs = base.clone();
        theirs.sections.remove(3);
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package, theirs);
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].section, "@rule[1]");
        assert_eq!(m.conflicts[0].option, None);
        // The other way round: the edit (theirs) stays.
        let m = merge3(&base, &theirs, &ours);
        assert_eq!(m.package, ours);
        assert_eq!(m.conflicts.len(), 1);
    }

    #[test]
    fn texts_merge_and_render_as_uci_writes() {
        let base = "config system\n\toption timezone 'UTC'\n\toption log_size '64'\n";
        let ours = "config system\n\toption timezone 'CET'\n\toption log_size '64'\n";
        let theirs = "config system\n\toption timezone 'UTC'\n\toption log_size '128'\n";
        let (text, c) = merge3_text(base, ours, theirs, Path::new("system")).unwrap();
        assert!(c.is_empty());
        let p = parse(&text);
        assert_eq!(p.sections[0].get("timezone"), Some("CET"));
        assert_eq!(p.sections[0].get("log_size"), Some("128"));
        assert!(
            merge3_text("config x\n", "config 'a b'", "", Path::new("/etc/config/x"))
                .unwrap_err()
                .to_string()
                .contains("/etc/config/x")
        );
    }

    // ---- properties

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-c]{1,2}".prop_map(Value::Single),
            prop::collection::vec("[a-c]{1,2}", 1..4).prop_map(|mut l| {
                l.dedup();
                Value::List(l)
            }),
        ]
    }

    fn section() -> impl Strategy<Value = Section> {
        (
            prop_oneof![Just("rule"), Just("zone")],
            prop::option::of(prop_oneof![Just("s1"), Just("s2"), Just("s3")]),
            prop::collection::btree_map("o[1-4]", value(), 0..4),
        )
            .prop_map(|(kind, name, opts)| Section {
                kind: kind.into(),
                name: name.map(str::to_string),
                options: opts.into_iter().collect(),
            })
    }

    fn package() -> impl Strategy<Value = Package> {
        prop::collection::vec(section(), 0..5).prop_map(|mut sections| {
            // One section per name, as a parsed file has.
            let mut seen = BTreeSet::new();
            sections.retain(|s| s.name.as_ref().is_none_or(|n| seen.insert(n.clone())));
            Package { sections }
        })
    }

    /// Every (section label, option, value) of a package, for order-blind comparisons.
    fn facts(p: &Package) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for (i, s) in p.sections.iter().enumerate() {
            for (o, v) in &s.options {
                out.insert((label(p, i), o.clone(), format!("{v:?}")));
            }
        }
        out
    }

    /// `b` edited: named sections' options changed on the option names `mine` picks.
    fn edit(b: &Package, mine: impl Fn(&str) -> bool, v: &str) -> Package {
        let mut p = b.clone();
        for s in p.sections.iter_mut().filter(|s| s.name.is_some()) {
            for n in ["o1", "o2", "o3", "o4"].into_iter().filter(|n| mine(n)) {
                s.set(n, v).unwrap();
            }
        }
        p
    }

    proptest! {
        #[test]
        fn one_sided_changes_come_through_whole(b in package(), x in package()) {
            let m = merge3(&b, &x, &b);
            prop_assert_eq!(&m.package, &x);
            prop_assert!(m.conflicts.is_empty());
            let m = merge3(&b, &b, &x);
            prop_assert_eq!(&m.package, &x);
            prop_assert!(m.conflicts.is_empty());
            let m = merge3(&b, &x, &x);
            prop_assert_eq!(&m.package, &x);
            prop_assert!(m.conflicts.is_empty());
        }

        #[test]
        fn non_overlapping_edits_commute(b in package()) {
            let o = edit(&b, |n| n == "o1" || n == "o2", "ours");
            let t = edit(&b, |n| n == "o3" || n == "o4", "theirs");
            let ot = merge3(&b, &o, &t);
            let to = merge3(&b, &t, &o);
            prop_assert!(ot.conflicts.is_empty() && to.conflicts.is_empty());
            prop_assert_eq!(facts(&ot.package), facts(&to.package));
            for s in ot.package.sections.iter().filter(|s| s.name.is_some()) {
                prop_assert_eq!(s.get("o1"), Some("ours"));
                prop_assert_eq!(s.get("o4"), Some("theirs"));
            }
        }

        #[test]
        fn conflicts_never_drop_a_value(b in package(), o in package(), t in package()) {
            let m = merge3(&b, &o, &t);
            for c in &m.conflicts {
                let Some(opt) = &c.option else { continue };
                if c.section.starts_with('@') {
                    continue;
                }
                let sect = m.package.sections.iter().enumerate()
                    .find(|(i, _)| label(&m.package, *i) == c.section)
                    .map(|(_, s)| s);
                // The winner (theirs) is what the merge holds; ours is in the conflict.
                prop_assert_eq!(sect.and_then(|s| s.value(opt)), c.theirs.as_ref());
                prop_assert!(c.ours.is_some() || c.theirs.is_some() || c.base.is_some());
                prop_assert_ne!(&c.ours, &c.theirs);
            }
            let back = Package::parse(&m.package.render(), Path::new("m")).unwrap();
            prop_assert_eq!(back, m.package);
        }
    }
}
