//! Queries in rclip's grammar: terms joined by `+` and `-`, each text or a path to an image,
//! with an optional `WEIGHT:` prefix (`"2:golden retriever" + ./pool.jpg - snow`). The query
//! vector is the weighted sum of the terms' normalized embeddings, normalized.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a term stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum TermKind {
    /// Text for the text tower.
    Text(String),
    /// An image file (or a file in the index, whose stored embedding is used).
    Image(PathBuf),
}

/// One weighted term.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Signed weight (`-` negates it).
    pub weight: f32,
    /// The term.
    pub kind: TermKind,
}

/// Parse the query words (as the shell split them) into terms. A word that is exactly `+` or
/// `-` is an operator; other words are joined with spaces into the current term. A term that
/// names an existing file is an image, anything else is text; `image_paths` are extra image
/// terms of weight 1.
pub fn parse(words: &[String], image_paths: &[PathBuf]) -> Result<Vec<Term>> {
    parse_with(words, image_paths, &|t| Path::new(t).is_file())
}

/// Parse a query string (split on white space) in which every term is text: what a server
/// uses, where a term must never make it open a file.
pub fn parse_text(query: &str) -> Result<Vec<Term>> {
    let words: Vec<String> = query.split_whitespace().map(str::to_string).collect();
    parse_with(&words, &[], &|_| false)
}

fn parse_with(words: &[String], image_paths: &[PathBuf], is_image: &dyn Fn(&str) -> bool) -> Result<Vec<Term>> {
    let mut terms = Vec::new();
    let mut sign = 1f32;
    let mut current: Vec<&str> = Vec::new();
    let mut finish = |sign: f32, current: &mut Vec<&str>| -> Result<()> {
        if current.is_empty() {
            return Err(Error::Query("an operator without a term after it".into()));
        }
        let text = current.join(" ");
        current.clear();
        terms.push(term(sign, &text, is_image)?);
        Ok(())
    };
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "+" | "-" => {
                if i == 0 && w == "-" {
                    // A leading minus: a negative first term.
                } else {
                    finish(sign, &mut current)?;
                }
                sign = if w == "+" { 1.0 } else { -1.0 };
            }
            _ => current.push(w),
        }
    }
    if !current.is_empty() {
        finish(sign, &mut current)?;
    } else if !words.is_empty() {
        return Err(Error::Query("the query ends with an operator".into()));
    }
    for p in image_paths {
        terms.push(Term { weight: 1.0, kind: TermKind::Image(p.clone()) });
    }
    if terms.is_empty() {
        return Err(Error::Query("nothing to search for (give text, an image path, or --image)".into()));
    }
    if terms.iter().all(|t| t.weight <= 0.0) {
        return Err(Error::Query("every term is negative: say what to look for, then what to avoid".into()));
    }
    Ok(terms)
}

fn term(sign: f32, text: &str, is_image: &dyn Fn(&str) -> bool) -> Result<Term> {
    let (weight, rest) = match text.split_once(':') {
        Some((w, rest)) if !w.is_empty() && w.parse::<f32>().is_ok() => {
            let w: f32 = w.parse().unwrap_or(1.0);
            if !w.is_finite() || w <= 0.0 || w > 1000.0 {
                return Err(Error::Query(format!("weight `{w}` in `{text}` must be in (0, 1000]")));
            }
            (w, rest.trim())
        }
        _ => (1.0, text.trim()),
    };
    if rest.is_empty() {
        return Err(Error::Query(format!("empty term `{text}`")));
    }
    let kind = if is_image(rest) { TermKind::Image(PathBuf::from(rest)) } else { TermKind::Text(rest.into()) };
    Ok(Term { weight: sign * weight, kind })
}

/// `sum(weight * e / |e|)`, normalized: the query vector of embedded terms.
pub fn combine(terms: &[(f32, Vec<f32>)]) -> Result<Vec<f32>> {
    let dim = terms.first().map_or(0, |t| t.1.len());
    let mut q = vec![0f32; dim];
    for (w, e) in terms {
        if e.len() != dim {
            return Err(Error::Query("terms of different dimensions".into()));
        }
        let n = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for (d, x) in q.iter_mut().zip(e) {
            *d += w * x / n;
        }
    }
    let n = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n.is_nan() || n <= 1e-6 {
        return Err(Error::Query("the terms cancel out (their weighted sum is zero)".into()));
    }
    Ok(q.into_iter().map(|x| x / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn rclip_grammar() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("pool.jpg");
        std::fs::write(&img, b"x").unwrap();
        let img_s = img.to_string_lossy().to_string();
        let t = parse(&words(&["2:golden retriever", "+", &img_s, "-", "snow"]), &[]).unwrap();
        assert_eq!(
            t,
            vec![
                Term { weight: 2.0, kind: TermKind::Text("golden retriever".into()) },
                Term { weight: 1.0, kind: TermKind::Image(img.clone()) },
                Term { weight: -1.0, kind: TermKind::Text("snow".into()) },
            ]
        );
        // Unquoted words join into one term; a colon that is not a weight stays text.
        let t = parse(&words(&["a", "dog", "on", "a", "beach"]), &[]).unwrap();
        assert_eq!(t, vec![Term { weight: 1.0, kind: TermKind::Text("a dog on a beach".into()) }]);
        let t = parse(&words(&["note: red"]), &[]).unwrap();
        assert_eq!(t[0].kind, TermKind::Text("note: red".into()));
        for bad in [&["+"][..], &["a", "+"], &["-", "snow"], &["0:cat"], &["a", "+", "+", "b"], &["3:"]] {
            assert!(parse(&words(bad), &[]).is_err(), "{bad:?}");
        }
        assert!(parse(&[], &[]).is_err());
        assert_eq!(parse(&[], std::slice::from_ref(&img)).unwrap()[0].kind, TermKind::Image(img));
    }

    #[test]
    fn combination_is_a_normalized_weighted_sum() {
        let q = combine(&[(2.0, vec![3.0, 0.0]), (1.0, vec![0.0, 0.5]), (-1.0, vec![0.0, 2.0])]).unwrap();
        // 2*(1,0) + (0,1) - (0,1) = (2,0) -> (1,0)
        assert_eq!(q, vec![1.0, 0.0]);
        assert!(combine(&[(1.0, vec![1.0, 0.0]), (-1.0, vec![2.0, 0.0])]).is_err());
    }
}
