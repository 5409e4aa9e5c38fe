//! One worker's share of the shards: `--shard I/N` takes shards `I, I+N, I+2N, ...` (0-based),
//! so shares are disjoint, cover everything, and stay balanced as shards are added.

use crate::{Error, Result};

/// A worker's share: its index and the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This worker, `0..count`.
    pub index: u64,
    /// Workers in all.
    pub count: u64,
}

impl Share {
    /// Everything (one worker).
    pub const ALL: Share = Share { index: 0, count: 1 };

    /// Parse `I/N`.
    pub fn parse(s: &str) -> Result<Share> {
        let bad = || Error::Share(format!("`{s}` is not I/N with 0 <= I < N (for example 3/8)"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        Share::new(index, count).ok_or_else(bad)
    }

    fn new(index: u64, count: u64) -> Option<Share> {
        (count > 0 && index < count).then_some(Share { index, count })
    }

    /// The share the engines' variables name, if any: a Slurm array task
    /// (`SLURM_ARRAY_TASK_ID` from `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`), or a
    /// Kubernetes indexed Job (`JOB_COMPLETION_INDEX`, of `count`, its `completions`, which
    /// Kubernetes does not put in the environment).
    pub fn from_env(count: Option<u64>) -> Result<Option<Share>> {
        Share::from_vars(|k| std::env::var(k).ok(), count)
    }

    /// [`Share::from_env`] over any variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, count: Option<u64>) -> Result<Option<Share>> {
        let num = |k: &str| -> Result<Option<u64>> {
            var(k)
                .map(|v| v.trim().parse().map_err(|_| Error::Share(format!("{k}={v} is not a whole number"))))
                .transpose()
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let n = match (count, num("SLURM_ARRAY_TASK_COUNT")?) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => {
                    return Err(Error::Share("SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT".into()))
                }
            };
            let index = id
                .checked_sub(min)
                .ok_or_else(|| Error::Share(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")))?;
            return Share::new(index, n).map(Some).ok_or_else(|| Error::Share(format!("array task {index} of {n}")));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let n = count.ok_or_else(|| {
                Error::Share("JOB_COMPLETION_INDEX is set: give the Job's completions as --shard-count N".into())
            })?;
            return Share::new(index, n)
                .map(Some)
                .ok_or_else(|| Error::Share(format!("completion index {index} of {n}")));
        }
        Ok(None)
    }

    /// Whether the `i`-th shard (in the full list's order) is this worker's.
    pub fn takes(&self, i: usize) -> bool {
        i as u64 % self.count == self.index
    }

    /// This worker's shards of `all`.
    pub fn pick<'a, T>(&self, all: &'a [T]) -> Vec<&'a T> {
        all.iter().enumerate().filter(|(i, _)| self.takes(*i)).map(|(_, t)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shares_are_disjoint_and_cover_everything() {
        let all: Vec<usize> = (0..10).collect();
        let mut seen: Vec<usize> =
            (0..3).flat_map(|i| Share { index: i, count: 3 }.pick(&all).into_iter().copied()).collect();
        seen.sort();
        assert_eq!(seen, all);
        assert_eq!(Share::parse("1/3").unwrap().pick(&all), [&1, &4, &7]);
        for bad in ["3/3", "1/0", "a/2", "1", "-1/2"] {
            assert!(Share::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn engines_variables() {
        let vars = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            move |k: &str| m.get(k).cloned()
        };
        let slurm =
            vars(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "8")]);
        assert_eq!(Share::from_vars(slurm, None).unwrap(), Some(Share { index: 4, count: 8 }));
        let k8s = vars(&[("JOB_COMPLETION_INDEX", "2")]);
        assert_eq!(Share::from_vars(&k8s, Some(4)).unwrap(), Some(Share { index: 2, count: 4 }));
        assert!(Share::from_vars(&k8s, None).is_err(), "completions must be given");
        assert!(Share::from_vars(vars(&[("JOB_COMPLETION_INDEX", "4")]), Some(4)).is_err());
        assert_eq!(Share::from_vars(vars(&[]), None).unwrap(), None);
    }
}
