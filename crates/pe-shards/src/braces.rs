//! Brace ranges in shard names: `{00000..00099}` (zero-padded to the width of the first
//! bound, as WebDataset writes it), several per pattern, and `{a,b}` lists.

use crate::{Error, Result};

/// Most names one pattern may expand to (counted before any is made).
pub const MAX_EXPANSION: u64 = 10_000_000;

/// One brace group: the names it stands for.
enum Group {
    Range { from: u64, to: u64, width: usize },
    List(Vec<String>),
}

impl Group {
    fn len(&self) -> u64 {
        match self {
            Group::Range { from, to, .. } => to - from + 1,
            Group::List(v) => v.len() as u64,
        }
    }
    fn get(&self, i: u64) -> String {
        match self {
            Group::Range { from, width, .. } => format!("{:0width$}", from + i, width = *width),
            Group::List(v) => v[i as usize].clone(),
        }
    }
}

/// The names `pattern` stands for, in order (the last group varies fastest). A pattern without
/// braces is itself.
pub fn expand(pattern: &str) -> Result<Vec<String>> {
    let bad = |reason: String| Error::Pattern { pattern: pattern.to_string(), reason };
    let mut literals = vec![String::new()];
    let mut groups = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| bad("a `{` without `}`".into()))?;
        literals.last_mut().expect("one literal at least").push_str(&rest[..open]);
        let body = &rest[open + 1..close];
        if body.contains('{') {
            return Err(bad("nested braces".into()));
        }
        groups.push(group(body).map_err(bad)?);
        literals.push(String::new());
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(bad("a `}` without `{`".into()));
    }
    literals.last_mut().expect("one literal at least").push_str(rest);
    let total = groups.iter().try_fold(1u64, |n, g| n.checked_mul(g.len())).filter(|n| *n <= MAX_EXPANSION);
    let Some(total) = total else {
        return Err(bad(format!("expands to more than {MAX_EXPANSION} names")));
    };
    let mut out = Vec::with_capacity(total as usize);
    for mut i in 0..total {
        let mut picks = vec![0u64; groups.len()];
        for (g, pick) in groups.iter().zip(picks.iter_mut()).rev() {
            *pick = i % g.len();
            i /= g.len();
        }
        let mut name = literals[0].clone();
        for ((g, pick), lit) in groups.iter().zip(picks).zip(&literals[1..]) {
            name.push_str(&g.get(pick));
            name.push_str(lit);
        }
        out.push(name);
    }
    Ok(out)
}

fn group(body: &str) -> std::result::Result<Group, String> {
    if let Some((a, b)) = body.split_once("..") {
        let parse = |s: &str| {
            if s.is_empty() || s.len() > 18 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!("`{{{body}}}`: bounds must be whole numbers of at most 18 digits"));
            }
            s.parse::<u64>().map_err(|e| e.to_string())
        };
        let (from, to) = (parse(a)?, parse(b)?);
        if to < from {
            return Err(format!("`{{{body}}}`: the range runs backwards"));
        }
        return Ok(Group::Range { from, to, width: a.len() });
    }
    if body.contains(',') {
        return Ok(Group::List(body.split(',').map(str::to_string).collect()));
    }
    Err(format!("`{{{body}}}` is neither a range `{{a..b}}` nor a list `{{a,b}}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lists_and_refusals() {
        assert_eq!(expand("s/{00000..00002}.tar").unwrap(), ["s/00000.tar", "s/00001.tar", "s/00002.tar"]);
        assert_eq!(expand("{a,b}-{8..10}").unwrap(), ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]);
        assert_eq!(expand("plain.tar").unwrap(), ["plain.tar"]);
        for bad in [
            "{1..",
            "x}",
            "{3..1}",
            "{a..b}",
            "{{1..2}}",
            "{0..99999999999}",
            "{1}",
            "{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}",
        ] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }
}
