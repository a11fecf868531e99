/*!
Hard limits on series per metric family. Beyond `limit` groups, the smallest
fold into one `[other]` series (`comm="[other]"`, `peer_addr="[other]"`)
whose counts are the sums of what it absorbed, so the family's sum stays the
true total; its oldest age is the oldest of them. How many groups were folded
is reported (`cwatch_series_folded`).
*/
use crate::table::GroupStats;

/// One series: its label values (in the family's label order) and numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub labels: Vec<String>,
    pub stats: GroupStats,
}

/// Keeps at most `limit` series (0 = no limit): the `limit - 1` biggest (by
/// sockets, then leaked, then oldest) and one `other` series holding the
/// rest. Returns the series and how many groups were folded.
pub fn fold(mut series: Vec<Series>, limit: usize, other: Vec<String>) -> (Vec<Series>, usize) {
    if limit == 0 || series.len() <= limit {
        return (series, 0);
    }
    series.sort_by(|a, b| {
        (b.stats.sockets, b.stats.leaked, b.stats.oldest)
            .cmp(&(a.stats.sockets, a.stats.leaked, a.stats.oldest))
            .then_with(|| a.labels.cmp(&b.labels))
    });
    let rest = series.split_off(limit - 1);
    let folded = rest.len();
    let mut stats = GroupStats::default();
    for s in rest {
        stats.sockets += s.stats.sockets;
        stats.leaked += s.stats.leaked;
        stats.oldest = stats.oldest.max(s.stats.oldest);
    }
    // A real group that happens to carry the same labels merges in.
    if let Some(same) = series.iter_mut().find(|s| s.labels == other) {
        same.stats.sockets += stats.sockets;
        same.stats.leaked += stats.leaked;
        same.stats.oldest = same.stats.oldest.max(stats.oldest);
    } else {
        series.push(Series {
            labels: other,
            stats,
        });
    }
    (series, folded)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn s(name: &str, sockets: u64, leaked: u64, oldest: u64) -> Series {
        Series {
            labels: vec![name.to_string()],
            stats: GroupStats {
                sockets,
                leaked,
                oldest: Duration::from_secs(oldest),
            },
        }
    }

    #[test]
    fn smallest_groups_fold_and_sums_stay_true() {
        let all = vec![
            s("a", 360, 360, 900),
            s("b", 1, 0, 5),
            s("c", 50, 10, 400),
            s("d", 2, 2, 1000),
            s("e", 7, 0, 30),
        ];
        let total: u64 = all.iter().map(|x| x.stats.sockets).sum();
        let leaked: u64 = all.iter().map(|x| x.stats.leaked).sum();
        let (kept, folded) = fold(all, 3, vec!["[other]".into()]);
        assert_eq!(folded, 3);
        let names: Vec<&str> = kept.iter().map(|x| x.labels[0].as_str()).collect();
        assert_eq!(names, vec!["a", "c", "[other]"]);
        assert_eq!(kept.iter().map(|x| x.stats.sockets).sum::<u64>(), total);
        assert_eq!(kept.iter().map(|x| x.stats.leaked).sum::<u64>(), leaked);
        assert_eq!(
            kept[2].stats,
            GroupStats {
                sockets: 10,
                leaked: 2,
                oldest: Duration::from_secs(1000)
            }
        );
    }

    #[test]
    fn under_the_limit_or_unlimited_nothing_folds() {
        let all = vec![s("a", 1, 0, 1), s("b", 2, 0, 1)];
        assert_eq!(fold(all.clone(), 2, vec![]).1, 0);
        assert_eq!(fold(all.clone(), 0, vec![]).1, 0);
        let (one, folded) = fold(all, 1, vec!["[other]".into()]);
        assert_eq!((one.len(), folded, one[0].stats.sockets), (1, 2, 3));
    }
}
