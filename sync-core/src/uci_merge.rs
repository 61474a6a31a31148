//! Three-way merge of UCI packages (issue 11, item 2): a configuration file both firewall
//! nodes changed since their last common version (the base).
//!
//! The peer's side (`theirs`, the authority) wins a real conflict, but nothing is dropped
//! without a trace: every conflict is reported with the base's, ours' and theirs' values.
//!
//! - Sections: named ones are matched across the three by name. Anonymous ones (firewall
//!   rules, redirects: what `uci add` makes) have no identity, so each side's are matched to
//!   the base's anonymous sections of the same type by content: equal content first, then by
//!   the most identical (option, value) pairs in common (at least one). What is left over is an
//!   addition (or, in the base, a deletion). A named section both sides added is merged as if
//!   the base had it empty; an anonymous one both added with the same content is one section.
//! - A section deleted on one side and changed on the other is a conflict on the section as a
//!   whole: it stays if theirs changed it, it goes if theirs deleted it.
//! - Options are merged one by one: the side that changed one wins (deletion included), both
//!   changing it alike is no conflict, both changing it differently is a conflict. A list both
//!   changed is merged as an item set relative to the base (what either removed is removed,
//!   what either added is appended: ours' first), which is no conflict; a list turned into a
//!   single value or deleted on one side while the other changed it is one.
//! - Order (sections in the package, options in a section): the side that reordered what it
//!   shares with the base leads (theirs if both did, or neither), and what only the other side
//!   has goes right after what it follows there. So a change made on one side only comes
//!   through exactly: `merge3(b, x, b) == merge3(b, b, x) == merge3(b, x, x) == x`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::uci::{quote, Package, Section, UciError, Value};

/// Where a conflict is: a section, and an option in it (`None`: the section as a whole, e.g.
/// deleted on one side and changed on the other), with the three values, so that what the
/// authority overrode (ours) can still be seen and restored.
///
/// For `option: None` the values are either the section's type (`Value::Single`, when both
/// sides changed the type differently) or the whole section (`Value::List` of its lines as uci
/// writes them, unindented: `config rule`, `option name 'x'`, `list proto 'tcp'`, ...; `None` on
/// the side that deleted it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The section's name, or for an anonymous section `@<type>[<index>]` as uci shows it
    /// (its index in theirs, or in ours when theirs deleted it).
    pub section: String,
    pub option: Option<String>,
    /// `None`: absent on that side.
    pub base: Option<Value>,
    pub ours: Option<Value>,
    pub theirs: Option<Value>,
}

/// A merge's result: the package (theirs' value wherever the sides conflicted) and every
/// conflict, so that the caller can report what the authority overrode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Merged {
    pub(crate) package: Package,
    pub(crate) conflicts: Vec<Conflict>,
}

/// Three-way merge at section / option / list level; on a conflict `theirs` wins and the
/// conflict is listed (see the module doc for the rules).
pub(crate) fn merge3(base: &Package, ours: &Package, theirs: &Package) -> Merged {
    merge3_traced(base, ours, theirs).merged
}

/// Convenience on file texts: parses the three (`path` names them in parse errors), merges,
/// and returns the merged file as `uci commit` writes it, with the conflicts.
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

/// Which section of each input one merged section (or one conflict) comes from: what the
/// tests need to check a merge against its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    base: Option<usize>,
    ours: Option<usize>,
    theirs: Option<usize>,
}

/// [`merge3`], with where each merged section and each conflict comes from.
#[cfg_attr(not(test), allow(dead_code))]
struct Traced {
    merged: Merged,
    /// One per section of `merged.package`.
    sections: Vec<Origin>,
    /// One per conflict of `merged.conflicts`.
    conflicts: Vec<Origin>,
}

fn merge3_traced(base: &Package, ours: &Package, theirs: &Package) -> Traced {
    let om = match_sections(base, ours);
    let tm = match_sections(base, theirs);
    let nb = base.sections.len();
    let mut origins: Vec<Origin> = (0..nb)
        .map(|j| Origin {
            base: Some(j),
            ours: om.iter().position(|m| *m == Some(j)),
            theirs: tm.iter().position(|m| *m == Some(j)),
        })
        .collect();
    // Section identities: the base's are 0..nb, each addition gets the next one; an addition
    // both sides made (same name; anonymous: same content) is one identity.
    let mut o_ids = Vec::with_capacity(om.len());
    for (i, m) in om.iter().enumerate() {
        match m {
            Some(j) => o_ids.push(*j),
            None => {
                o_ids.push(origins.len());
                origins.push(Origin {
                    base: None,
                    ours: Some(i),
                    theirs: None,
                });
            }
        }
    }
    let mut t_ids = Vec::with_capacity(tm.len());
    for (i, m) in tm.iter().enumerate() {
        if let Some(j) = m {
            t_ids.push(*j);
            continue;
        }
        let s = &theirs.sections[i];
        let twin = origins.iter().position(|g| {
            g.base.is_none()
                && g.theirs.is_none()
                && g.ours.is_some_and(|oi| {
                    let x = &ours.sections[oi];
                    match &s.name {
                        Some(n) => x.name.as_ref() == Some(n),
                        None => x == s,
                    }
                })
        });
        match twin {
            Some(id) => {
                origins[id].theirs = Some(i);
                t_ids.push(id);
            }
            None => {
                t_ids.push(origins.len());
                origins.push(Origin {
                    base: None,
                    ours: None,
                    theirs: Some(i),
                });
            }
        }
    }

    let mut merged: Vec<Option<Section>> = Vec::with_capacity(origins.len());
    let mut conflicts = Vec::new();
    let mut conflict_origins = Vec::new();
    for g in &origins {
        let b = g.base.map(|j| &base.sections[j]);
        let o = g.ours.map(|i| &ours.sections[i]);
        let t = g.theirs.map(|i| &theirs.sections[i]);
        let before = conflicts.len();
        let s = match (b, o, t) {
            (_, Some(o), Some(t)) => {
                let name = label(theirs, g.theirs.unwrap_or_default());
                Some(merge_section(&name, b, o, t, &mut conflicts))
            }
            // Deleted by theirs: gone, and a conflict keeps ours' version if ours changed it.
            (Some(b), Some(o), None) => {
                if o != b {
                    conflicts.push(Conflict {
                        section: label(ours, g.ours.unwrap_or_default()),
                        option: None,
                        base: Some(whole(b)),
                        ours: Some(whole(o)),
                        theirs: None,
                    });
                }
                None
            }
            // Deleted by ours: gone, unless theirs changed it (then theirs wins, and says so).
            (Some(b), None, Some(t)) => {
                if t != b {
                    conflicts.push(Conflict {
                        section: label(theirs, g.theirs.unwrap_or_default()),
                        option: None,
                        base: Some(whole(b)),
                        ours: None,
                        theirs: Some(whole(t)),
                    });
                    Some(t.clone())
                } else {
                    None
                }
            }
            (None, Some(o), None) => Some(o.clone()),
            (None, None, Some(t)) => Some(t.clone()),
            (_, None, None) => None,
        };
        conflict_origins.extend(std::iter::repeat_n(*g, conflicts.len() - before));
        merged.push(s);
    }

    let base_ids: Vec<usize> = (0..nb).collect();
    let order = merge_order(&base_ids, &o_ids, &t_ids, |id| merged[*id].is_some());
    let mut sections = Vec::with_capacity(order.len());
    let mut section_origins = Vec::with_capacity(order.len());
    for id in order {
        if let Some(s) = merged[id].take() {
            sections.push(s);
            section_origins.push(origins[id]);
        }
    }
    Traced {
        merged: Merged {
            package: Package { sections },
            conflicts,
        },
        sections: section_origins,
        conflicts: conflict_origins,
    }
}

/// Maps each section of `side` to the base section it continues (`None`: new on this side).
///
/// Named sections match by name. Anonymous ones have no identity, so they match the base's
/// anonymous sections of the same type by content: equal content first (an untouched rule
/// keeps its identity whatever moved around it), then the pairs with the most identical
/// (option, value) pairs in common (at least one: an edited rule still shares most of its
/// options), best first, earlier sections first on a tie.
fn match_sections(base: &Package, side: &Package) -> Vec<Option<usize>> {
    let mut taken = vec![false; base.sections.len()];
    let mut out = vec![None; side.sections.len()];
    for (i, s) in side.sections.iter().enumerate() {
        let Some(n) = &s.name else { continue };
        if let Some(j) = (0..base.sections.len())
            .find(|&j| !taken[j] && base.sections[j].name.as_ref() == Some(n))
        {
            taken[j] = true;
            out[i] = Some(j);
        }
    }
    for (i, s) in side.sections.iter().enumerate() {
        if s.name.is_some() {
            continue;
        }
        if let Some(j) = (0..base.sections.len()).find(|&j| !taken[j] && base.sections[j] == *s) {
            taken[j] = true;
            out[i] = Some(j);
        }
    }
    let mut pairs = Vec::new();
    for (i, s) in side.sections.iter().enumerate() {
        if s.name.is_some() || out[i].is_some() {
            continue;
        }
        for (j, b) in base.sections.iter().enumerate() {
            if taken[j] || b.name.is_some() || b.kind != s.kind {
                continue;
            }
            let common = s.options.iter().filter(|o| b.options.contains(o)).count();
            if common > 0 {
                pairs.push((common, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, i, j) in pairs {
        if out[i].is_none() && !taken[j] {
            taken[j] = true;
            out[i] = Some(j);
        }
    }
    out
}

/// uci's name for section `i` of `p`: its name, or `@type[index among that type]`.
fn label(p: &Package, i: usize) -> String {
    let Some(s) = p.sections.get(i) else {
        return String::new();
    };
    match &s.name {
        Some(n) => n.clone(),
        None => {
            let idx = p.sections[..i].iter().filter(|o| o.kind == s.kind).count();
            format!("@{}[{idx}]", s.kind)
        }
    }
}

/// A whole section as a conflict value: its lines as uci writes them, unindented.
fn whole(s: &Section) -> Value {
    let plain = !s.kind.is_empty()
        && s.kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let kind = if plain {
        s.kind.clone()
    } else {
        quote(&s.kind)
    };
    let mut lines = vec![match &s.name {
        Some(n) => format!("config {kind} {}", quote(n)),
        None => format!("config {kind}"),
    }];
    for (name, value) in &s.options {
        match value {
            Value::Single(v) => lines.push(format!("option {name} {}", quote(v))),
            Value::List(l) => {
                lines.extend(l.iter().map(|v| format!("list {name} {}", quote(v))));
            }
        }
    }
    Value::List(lines)
}

/// Merges one section present on both sides: `b` is its base (`None`: both sides added it,
/// merged as if the base had it empty). `name` labels the conflicts.
fn merge_section(
    name: &str,
    b: Option<&Section>,
    o: &Section,
    t: &Section,
    conflicts: &mut Vec<Conflict>,
) -> Section {
    // The type is merged like an option.
    let bk = b.map(|b| b.kind.as_str());
    let kind = if o.kind == t.kind || Some(o.kind.as_str()) == bk {
        t.kind.clone()
    } else if Some(t.kind.as_str()) == bk {
        o.kind.clone()
    } else {
        conflicts.push(Conflict {
            section: name.to_string(),
            option: None,
            base: bk.map(|k| Value::Single(k.to_string())),
            ours: Some(Value::Single(o.kind.clone())),
            theirs: Some(Value::Single(t.kind.clone())),
        });
        t.kind.clone()
    };
    let bo: &[(String, Value)] = b.map_or(&[], |b| b.options.as_slice());
    let names =
        |opts: &[(String, Value)]| -> Vec<String> { opts.iter().map(|(n, _)| n.clone()).collect() };
    let (bn, on, tn) = (names(bo), names(&o.options), names(&t.options));
    let mut values: Vec<(&String, Option<Value>)> = Vec::new();
    for n in tn.iter().chain(&on).chain(&bn) {
        if values.iter().any(|(m, _)| *m == n) {
            continue;
        }
        let bv = bo.iter().find(|(m, _)| m == n).map(|(_, v)| v);
        let (ov, tv) = (o.value(n), t.value(n));
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
        values.push((n, v));
    }
    let value = |n: &String| {
        values
            .iter()
            .find(|(m, _)| *m == n)
            .and_then(|(_, v)| v.clone())
    };
    let order = merge_order(&bn, &on, &tn, |n| value(n).is_some());
    let options = order
        .into_iter()
        .filter_map(|n| value(&n).map(|v| (n, v)))
        .collect();
    Section {
        kind,
        name: t.name.clone(),
        options,
    }
}

/// Merges one option (`None`: absent); whether it is a conflict (then theirs' value).
fn merge_value(b: Option<&Value>, o: Option<&Value>, t: Option<&Value>) -> (Option<Value>, bool) {
    if o == b || o == t {
        return (t.cloned(), false);
    }
    if t == b {
        return (o.cloned(), false);
    }
    // Both changed it differently: two lists merge as item sets (a single base value is a
    // list of one: `uci add_list` on it makes one).
    if let (Some(Value::List(ol)), Some(Value::List(tl))) = (o, t) {
        let bl: &[String] = match b {
            None => &[],
            Some(Value::List(l)) => l,
            Some(Value::Single(s)) => std::slice::from_ref(s),
        };
        let l = merge_lists(bl, ol, tl);
        // UCI has no empty list: both removing everything between them deletes the option.
        return ((!l.is_empty()).then_some(Value::List(l)), false);
    }
    (t.cloned(), true)
}

/// Two changed lists as item sets relative to the base: the base's items neither side
/// removed, in base order, then ours' additions, then theirs' (no duplicates added).
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

/// The merged order of a sequence both sides may have changed (sections of a package,
/// options of a section), of the elements `keep` says survive: the side that reordered what
/// it shares with the base leads (theirs if both did, or neither), and an element only the
/// other side has goes right after the one it follows there (first if none). So a one-sided
/// change keeps its own order exactly, and additions appended on both sides come out as the
/// base's, then ours', then theirs'.
fn merge_order<T: PartialEq + Clone>(
    base: &[T],
    ours: &[T],
    theirs: &[T],
    keep: impl Fn(&T) -> bool,
) -> Vec<T> {
    let reordered = |side: &[T]| {
        let s = side.iter().filter(|x| base.contains(x));
        let b = base.iter().filter(|x| side.contains(x));
        !s.eq(b)
    };
    let (lead, other) = if reordered(ours) && !reordered(theirs) {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    let mut out: Vec<T> = Vec::new();
    for x in lead {
        if keep(x) && !out.contains(x) {
            out.push(x.clone());
        }
    }
    for (k, x) in other.iter().enumerate() {
        if !keep(x) || out.contains(x) {
            continue;
        }
        let at = other[..k]
            .iter()
            .rev()
            .find_map(|p| out.iter().position(|q| q == p))
            .map_or(0, |p| p + 1);
        out.insert(at, x.clone());
    }
    // Nothing survives that neither side has; kept for safety all the same.
    for x in base {
        if keep(x) && !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn parse(text: &str) -> Package {
        Package::parse(text, Path::new("test")).unwrap()
    }

    fn single(s: &str) -> Option<Value> {
        Some(Value::Single(s.into()))
    }

    const FIREWALL: &str = "
config defaults
\toption input 'ACCEPT'
\toption output 'ACCEPT'
\toption forward 'REJECT'
\toption synflood_protect '1'

config zone 'lan'
\toption name 'lan'
\tlist network 'lan'
\toption input 'ACCEPT'
\toption output 'ACCEPT'
\toption forward 'ACCEPT'

config zone 'wan'
\toption name 'wan'
\tlist network 'wan'
\tlist network 'wan6'
\toption input 'REJECT'
\toption masq '1'

config forwarding
\toption src 'lan'
\toption dest 'wan'

config rule
\toption name 'Allow-DHCP-Renew'
\toption src 'wan'
\toption proto 'udp'
\toption dest_port '68'
\toption target 'ACCEPT'
\toption family 'ipv4'

config rule
\toption name 'Allow-Ping'
\toption src 'wan'
\toption proto 'icmp'
\toption icmp_type 'echo-request'
\toption family 'ipv4'
\toption target 'ACCEPT'

config redirect
\toption name 'web'
\toption src 'wan'
\toption src_dport '8080'
\toption dest_ip '192.168.1.10'
\toption dest_port '80'
\toption target 'DNAT'
";

    const NETWORK: &str = "
config interface 'loopback'
\toption device 'lo'
\toption proto 'static'
\toption ipaddr '127.0.0.1'
\toption netmask '255.0.0.0'

config globals 'globals'
\toption ula_prefix 'fd12:3456:789a::/48'

config device
\toption name 'br-lan'
\toption type 'bridge'
\tlist ports 'lan1'
\tlist ports 'lan2'

config interface 'lan'
\toption device 'br-lan'
\toption proto 'static'
\toption ipaddr '192.168.1.1'
\toption netmask '255.255.255.0'
\tlist dns '9.9.9.9'
";

    /// What `uci add firewall rule; uci set firewall.@rule[-1].name=...` does.
    fn uci_add_rule(p: &mut Package, name: &str, port: &str) {
        let s = p.add_section("rule").unwrap();
        s.set("name", name).unwrap();
        s.set("src", "wan").unwrap();
        s.set("dest_port", port).unwrap();
        s.set("target", "ACCEPT").unwrap();
    }

    #[test]
    fn rules_added_on_each_side_are_both_kept() {
        let base = parse(FIREWALL);
        let mut ours = base.clone();
        uci_add_rule(&mut ours, "Allow-SSH", "22");
        let mut theirs = base.clone();
        uci_add_rule(&mut theirs, "Allow-WireGuard", "51820");
        let m = merge3(&base, &ours, &theirs);
        assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
        let names: Vec<_> = m
            .package
            .sections_of_kind("rule")
            .filter_map(|s| s.get("name"))
            .collect();
        assert_eq!(
            names,
            [
                "Allow-DHCP-Renew",
                "Allow-Ping",
                "Allow-SSH",
                "Allow-WireGuard"
            ]
        );
        // base's sections first, then ours' addition, then theirs'
        let n = m.package.sections.len();
        assert_eq!(m.package.sections[..n - 2], base.sections[..]);
        // the same rule added on both sides is one rule
        let m = merge3(&base, &ours, &ours);
        assert_eq!(m.package, ours);
        let mut both = theirs.clone();
        uci_add_rule(&mut both, "Allow-SSH", "22");
        let m = merge3(&base, &ours, &both);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.package.sections_of_kind("rule").count(), 4);
    }

    #[test]
    fn same_option_changed_differently_is_a_conflict_theirs_wins() {
        let base = parse(FIREWALL);
        let mut ours = base.clone();
        ours.set("lan", "input", "REJECT").unwrap();
        ours.add_list("wan", "network", "wwan").unwrap();
        // ours edits the Allow-Ping rule's family, theirs its target: no conflict
        ours.sections[5].set("family", "any").unwrap();
        let mut theirs = base.clone();
        theirs.set("lan", "input", "DROP").unwrap();
        theirs
            .set_list("wan", "network", vec!["wan".into()])
            .unwrap();
        theirs.sections[5].set("target", "DROP").unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package.get("lan", "input"), Some("DROP"));
        // lists as item sets: theirs removed wan6, ours added wwan
        assert_eq!(m.package.get_list("wan", "network"), ["wan", "wwan"]);
        assert_eq!(m.package.sections[5].get("family"), Some("any"));
        assert_eq!(m.package.sections[5].get("target"), Some("DROP"));
        assert_eq!(
            m.conflicts,
            [Conflict {
                section: "lan".into(),
                option: Some("input".into()),
                base: single("ACCEPT"),
                ours: single("REJECT"),
                theirs: single("DROP"),
            }]
        );
        // an anonymous section's conflict is named as uci shows it; a deletion is a value
        let mut ours = base.clone();
        ours.sections[4].set("dest_port", "67-68").unwrap();
        let mut theirs = base.clone();
        theirs.sections[4].delete("dest_port");
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package.sections[4].get("dest_port"), None);
        assert_eq!(
            m.conflicts,
            [Conflict {
                section: "@rule[0]".into(),
                option: Some("dest_port".into()),
                base: single("68"),
                ours: single("67-68"),
                theirs: None,
            }]
        );
    }

    #[test]
    fn network_edits_on_both_nodes() {
        let base = parse(NETWORK);
        let mut ours = base.clone();
        ours.set("lan", "ipaddr", "10.0.0.1").unwrap();
        ours.add_list("lan", "dns", "1.1.1.1").unwrap();
        ours.sections[2].add_list("ports", "lan3").unwrap();
        let mut theirs = base.clone();
        theirs.set("lan", "ipaddr", "10.0.0.2").unwrap();
        theirs.add_list("lan", "dns", "8.8.8.8").unwrap();
        theirs.sections[2].set("type", "bridge").unwrap();
        theirs
            .ensure_section("interface", "guest")
            .unwrap()
            .set("proto", "static")
            .unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package.get("lan", "ipaddr"), Some("10.0.0.2"));
        assert_eq!(
            m.package.get_list("lan", "dns"),
            ["9.9.9.9", "1.1.1.1", "8.8.8.8"]
        );
        assert_eq!(
            m.package.sections[2].get_list("ports"),
            ["lan1", "lan2", "lan3"]
        );
        assert_eq!(m.package.get("guest", "proto"), Some("static"));
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].option.as_deref(), Some("ipaddr"));
        assert_eq!(m.conflicts[0].ours, single("10.0.0.1"));
        // a list turned into a single value against a list edit: a conflict, theirs wins
        let mut ours = base.clone();
        ours.set("lan", "dns", "1.1.1.1").unwrap();
        let mut theirs = base.clone();
        theirs.add_list("lan", "dns", "8.8.8.8").unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package.get_list("lan", "dns"), ["9.9.9.9", "8.8.8.8"]);
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].ours, single("1.1.1.1"));
        // each side removed the other's remaining port: the option goes (UCI has no empty list)
        let mut ours = base.clone();
        ours.sections[2]
            .set_list("ports", vec!["lan1".into()])
            .unwrap();
        let mut theirs = base.clone();
        theirs.sections[2]
            .set_list("ports", vec!["lan2".into()])
            .unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.package.sections[2].value("ports"), None);
        assert_eq!(parse(&m.package.render()), m.package);
    }

    #[test]
    fn section_deleted_on_one_side_and_edited_on_the_other_is_a_conflict() {
        let base = parse(FIREWALL);
        let mut ours = base.clone();
        ours.sections[5].set("target", "DROP").unwrap();
        let mut theirs = base.clone();
        theirs.sections.remove(5);
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package, theirs);
        let lines = |v: &[&str]| Some(Value::List(v.iter().map(|s| s.to_string()).collect()));
        let ping = |target: &str| {
            lines(&[
                "config rule",
                "option name 'Allow-Ping'",
                "option src 'wan'",
                "option proto 'icmp'",
                "option icmp_type 'echo-request'",
                "option family 'ipv4'",
                &format!("option target '{target}'"),
            ])
        };
        assert_eq!(
            m.conflicts,
            [Conflict {
                section: "@rule[1]".into(),
                option: None,
                base: ping("ACCEPT"),
                ours: ping("DROP"),
                theirs: None,
            }]
        );
        // The other way round: the edit (theirs) stays.
        let m = merge3(&base, &theirs, &ours);
        assert_eq!(m.package, ours);
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].ours, None);
        assert_eq!(m.conflicts[0].theirs, ping("DROP"));
        // Deleted on one side, untouched on the other: deleted, no conflict.
        let mut other = base.clone();
        other.set("lan", "input", "DROP").unwrap();
        let m = merge3(&base, &other, &theirs);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.package.sections.len(), base.sections.len() - 1);
        assert_eq!(m.package.get("lan", "input"), Some("DROP"));
        // A named section: the same.
        let mut ours = base.clone();
        ours.set("wan", "masq", "0").unwrap();
        let mut theirs = base.clone();
        theirs.remove_section("wan");
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package, theirs);
        assert_eq!(m.conflicts[0].section, "wan");
    }

    #[test]
    fn anonymous_sections_are_matched_by_content() {
        let base = parse(FIREWALL);
        // ours deletes Allow-DHCP-Renew; theirs edits Allow-Ping (heavily) and reorders nothing
        let mut ours = base.clone();
        ours.sections.remove(4);
        let mut theirs = base.clone();
        let ping = &mut theirs.sections[5];
        ping.set("family", "any").unwrap();
        ping.set("target", "DROP").unwrap();
        ping.delete("icmp_type");
        let m = merge3(&base, &ours, &theirs);
        assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
        let rules: Vec<_> = m.package.sections_of_kind("rule").collect();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0], &theirs.sections[5]);
        // a side that reordered the rules leads the order
        let mut ours = base.clone();
        ours.sections.swap(4, 5);
        let mut theirs = base.clone();
        theirs.sections[4].set("family", "any").unwrap();
        let m = merge3(&base, &ours, &theirs);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.package.sections[4].get("name"), Some("Allow-Ping"));
        assert_eq!(m.package.sections[5].get("family"), Some("any"));
    }

    #[test]
    fn type_changes_and_sections_added_on_both_sides() {
        let base = parse("config a 'x'\n\toption v '1'\n");
        let ours = parse("config b 'x'\n\toption v '1'\n\nconfig n 'y'\n\toption p '1'\n");
        let theirs = parse("config c 'x'\n\toption v '2'\n\nconfig n 'y'\n\toption p '2'\n");
        let m = merge3(&base, &ours, &theirs);
        assert_eq!(m.package, theirs);
        assert_eq!(
            m.conflicts,
            [
                Conflict {
                    section: "x".into(),
                    option: None,
                    base: single("a"),
                    ours: single("b"),
                    theirs: single("c"),
                },
                Conflict {
                    section: "y".into(),
                    option: Some("p".into()),
                    base: None,
                    ours: single("1"),
                    theirs: single("2"),
                },
            ]
        );
        // one side's type change goes through
        let m = merge3(&base, &ours, &base);
        assert_eq!(m.package.sections[0].kind, "b");
    }

    #[test]
    fn texts_merge_and_render_as_uci_writes() {
        let base = "config system\n\toption timezone 'UTC'\n\toption log_size '64'\n";
        let ours = "config system\n\toption timezone 'CET'\n\toption log_size '64'\n";
        let theirs = "config system\n\toption timezone 'UTC'\n\toption log_size '128'\n";
        let (text, c) = merge3_text(base, ours, theirs, Path::new("system")).unwrap();
        assert!(c.is_empty());
        assert_eq!(
            text,
            "\nconfig system\n\toption timezone 'CET'\n\toption log_size '128'\n\n"
        );
        assert!(
            merge3_text("config x\n", "config 'a b'", "", Path::new("/etc/config/x"))
                .unwrap_err()
                .to_string()
                .contains("/etc/config/x")
        );
        // a missing file (empty text) on one side is an empty package
        let (text, c) = merge3_text("", "", theirs, Path::new("system")).unwrap();
        assert!(c.is_empty());
        assert_eq!(parse(&text), parse(theirs));
    }

    // ---- properties

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-c]{1,2}".prop_map(Value::Single),
            prop::collection::vec("[a-c]", 1..4).prop_map(Value::List),
        ]
    }

    fn opt_name() -> impl Strategy<Value = String> {
        "o[1-4]"
    }

    fn section() -> impl Strategy<Value = Section> {
        (
            prop_oneof![Just("rule"), Just("zone")],
            prop::option::of(prop_oneof![Just("s1"), Just("s2"), Just("s3")]),
            prop::collection::vec((opt_name(), value()), 0..5),
        )
            .prop_map(|(kind, name, opts)| {
                let mut options: Vec<(String, Value)> = Vec::new();
                for (n, v) in opts {
                    if !options.iter().any(|(m, _)| *m == n) {
                        options.push((n, v));
                    }
                }
                Section {
                    kind: kind.into(),
                    name: name.map(str::to_string),
                    options,
                }
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

    /// One edit of a package, as an admin (or uci) would make it; indexes wrap around.
    #[derive(Debug, Clone)]
    enum Edit {
        Drop(usize),
        Set(usize, String, Value),
        Unset(usize, String),
        AddList(usize, String, String),
        Retype(usize),
        Add(Section),
        Swap(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let i = || 0..8usize;
        prop_oneof![
            i().prop_map(Edit::Drop),
            (i(), opt_name(), value()).prop_map(|(i, n, v)| Edit::Set(i, n, v)),
            (i(), opt_name()).prop_map(|(i, n)| Edit::Unset(i, n)),
            (i(), opt_name(), "[a-d]").prop_map(|(i, n, v)| Edit::AddList(i, n, v)),
            i().prop_map(Edit::Retype),
            section().prop_map(Edit::Add),
            (i(), i()).prop_map(|(i, j)| Edit::Swap(i, j)),
        ]
    }

    fn apply(p: &Package, edits: &[Edit]) -> Package {
        let mut p = p.clone();
        for e in edits {
            let len = p.sections.len();
            if let Edit::Add(s) = e {
                if s.name.as_ref().is_none_or(|n| p.section(n).is_none()) {
                    p.sections.push(s.clone());
                }
                continue;
            }
            if len == 0 {
                continue;
            }
            match e {
                Edit::Drop(i) => {
                    p.sections.remove(i % len);
                }
                Edit::Set(i, n, v) => {
                    let s = &mut p.sections[i % len];
                    match s.options.iter_mut().find(|(m, _)| m == n) {
                        Some(o) => o.1 = v.clone(),
                        None => s.options.push((n.clone(), v.clone())),
                    }
                }
                Edit::Unset(i, n) => {
                    p.sections[i % len].delete(n);
                }
                Edit::AddList(i, n, v) => p.sections[i % len].add_list(n, v).unwrap(),
                Edit::Retype(i) => {
                    let s = &mut p.sections[i % len];
                    s.kind = if s.kind == "rule" { "zone" } else { "rule" }.into();
                }
                Edit::Swap(i, j) => p.sections.swap(i % len, j % len),
                Edit::Add(_) => {}
            }
        }
        p
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        prop::collection::vec(edit(), 0..5)
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

    /// Checks every conflict of a merge against the inputs, and that a change of either side
    /// only disappears in a conflict or a list merge; then the render -> parse round trip.
    fn check_merge(b: &Package, o: &Package, t: &Package) -> Result<(), TestCaseError> {
        let tr = merge3_traced(b, o, t);
        let m = &tr.merged;
        prop_assert_eq!(tr.sections.len(), m.package.sections.len());
        prop_assert_eq!(tr.conflicts.len(), m.conflicts.len());
        let sec = |p: &Package, i: Option<usize>| i.map(|i| p.sections[i].clone());
        let merged_of = |g: &Origin| {
            tr.sections
                .iter()
                .position(|h| h == g)
                .map(|k| &m.package.sections[k])
        };
        for (c, g) in m.conflicts.iter().zip(&tr.conflicts) {
            let (bs, os, ts) = (sec(b, g.base), sec(o, g.ours), sec(t, g.theirs));
            let want_label = match g.theirs {
                Some(i) => label(t, i),
                None => label(o, g.ours.unwrap()),
            };
            prop_assert_eq!(&c.section, &want_label);
            prop_assert_ne!(&c.ours, &c.theirs);
            let ms = merged_of(g);
            match &c.option {
                Some(n) => {
                    let val = |s: &Option<Section>| s.as_ref().and_then(|s| s.value(n)).cloned();
                    prop_assert_eq!(&c.base, &val(&bs));
                    prop_assert_eq!(&c.ours, &val(&os));
                    prop_assert_eq!(&c.theirs, &val(&ts));
                    // the merge holds theirs' value
                    prop_assert!(ms.is_some());
                    prop_assert_eq!(ms.and_then(|s| s.value(n)), c.theirs.as_ref());
                }
                None if os.is_some() && ts.is_some() => {
                    // the type
                    let (os, ts) = (os.unwrap(), ts.unwrap());
                    prop_assert_eq!(&c.ours, &Some(Value::Single(os.kind.clone())));
                    prop_assert_eq!(&c.theirs, &Some(Value::Single(ts.kind.clone())));
                    prop_assert_eq!(&c.base, &bs.map(|s| Value::Single(s.kind)));
                    prop_assert_eq!(ms.map(|s| &s.kind), Some(&ts.kind));
                }
                None => {
                    // deleted on one side, changed on the other
                    prop_assert_eq!(&c.base, &bs.as_ref().map(whole));
                    prop_assert_eq!(&c.ours, &os.as_ref().map(whole));
                    prop_assert_eq!(&c.theirs, &ts.as_ref().map(whole));
                    prop_assert_eq!(ms, ts.as_ref());
                }
            }
        }
        // A change on either side is in the merge unless it conflicted or two lists merged.
        for (k, g) in tr.sections.iter().enumerate() {
            let ms = &m.package.sections[k];
            let (Some(oi), Some(ti)) = (g.ours, g.theirs) else {
                let only = sec(o, g.ours).or(sec(t, g.theirs));
                prop_assert_eq!(Some(ms), only.as_ref());
                continue;
            };
            let (os, ts) = (&o.sections[oi], &t.sections[ti]);
            let bs = sec(b, g.base);
            let conflicted = |n: &String| {
                m.conflicts
                    .iter()
                    .zip(&tr.conflicts)
                    .any(|(c, h)| h == g && c.option.as_ref() == Some(n))
            };
            for n in os.options.iter().chain(&ts.options).map(|(n, _)| n) {
                let bv = bs.as_ref().and_then(|s| s.value(n));
                let (ov, tv, mv) = (os.value(n), ts.value(n), ms.value(n));
                let lists = matches!((ov, tv), (Some(Value::List(_)), Some(Value::List(_))));
                if ov != bv && mv != ov {
                    prop_assert!(conflicted(n) || lists, "ours' {n} lost");
                }
                if tv != bv && mv != tv {
                    prop_assert!(lists, "theirs' {n} lost");
                }
            }
        }
        let back = Package::parse(&m.package.render(), Path::new("m")).unwrap();
        prop_assert_eq!(&back, &m.package);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// 1 and 2: a change made on one side only (or alike on both) comes through exactly.
        #[test]
        fn one_sided_changes_come_through_whole(
            b in package(), other in package(), e in edits()
        ) {
            for x in [other, apply(&b, &e)] {
                for m in [merge3(&b, &x, &b), merge3(&b, &b, &x), merge3(&b, &x, &x)] {
                    prop_assert_eq!(&m.package, &x);
                    prop_assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
                }
            }
        }

        /// 3: edits of disjoint options of the named sections commute and both come through.
        #[test]
        fn non_overlapping_edits_commute(
            b in package(),
            mask in 0u8..16,
            eo in prop::collection::vec((0..8usize, opt_name(), prop::option::of(value())), 0..6),
            et in prop::collection::vec((0..8usize, opt_name(), prop::option::of(value())), 0..6),
            added in any::<bool>(),
        ) {
            let ours_opt = |n: &str| {
                let k = n[1..].parse::<u8>().unwrap() - 1;
                mask & (1 << k) != 0
            };
            let named: Vec<String> = b.sections.iter().filter_map(|s| s.name.clone()).collect();
            let edit = |edits: &[(usize, String, Option<Value>)], mine: bool, new: &str| {
                let mut p = b.clone();
                for (i, n, v) in edits {
                    if named.is_empty() || ours_opt(n) != mine {
                        continue;
                    }
                    let s = p.section_mut(&named[i % named.len()]).unwrap();
                    match v {
                        Some(Value::Single(v)) => s.set(n, v).unwrap(),
                        Some(Value::List(l)) => s.set_list(n, l.clone()).unwrap(),
                        None => {
                            s.delete(n);
                        }
                    }
                }
                if added {
                    p.ensure_section("rule", new).unwrap().set("o1", new).unwrap();
                }
                p
            };
            let o = edit(&eo, true, "ours_new");
            let t = edit(&et, false, "theirs_new");
            let ot = merge3(&b, &o, &t);
            let to = merge3(&b, &t, &o);
            prop_assert!(ot.conflicts.is_empty(), "{:?}", ot.conflicts);
            prop_assert!(to.conflicts.is_empty(), "{:?}", to.conflicts);
            prop_assert_eq!(facts(&ot.package), facts(&to.package));
            for n in &named {
                let s = ot.package.section(n).unwrap();
                for opt in ["o1", "o2", "o3", "o4"] {
                    let from = if ours_opt(opt) { &o } else { &t };
                    prop_assert_eq!(
                        s.value(opt),
                        from.section(n).and_then(|s| s.value(opt)),
                        "{}.{}", n, opt
                    );
                }
            }
            for new in ["ours_new", "theirs_new"] {
                prop_assert_eq!(ot.package.section(new).is_some(), added);
            }
            check_merge(&b, &o, &t)?;
        }

        /// 4 and 5: conflicts report ours' and theirs' values, the merge holds theirs', no
        /// change is lost silently, and the merge renders to text that parses back to it.
        #[test]
        fn conflicts_never_drop_a_value(
            b in package(), eo in edits(), et in edits(), o2 in package(), t2 in package()
        ) {
            let o = apply(&b, &eo);
            let t = apply(&b, &et);
            check_merge(&b, &o, &t)?;
            check_merge(&b, &t, &o)?;
            check_merge(&b, &o2, &t2)?;
            check_merge(&b, &o, &t2)?;
        }
    }
}
