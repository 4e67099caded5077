//! Statistics over repeated runs: the median with a distribution-free confidence
//! interval (order statistics), and rank tests that say whether two sets of runs differ
//! by more than noise (Mann–Whitney U) or whether a set of runs lies below or above a
//! constant (the sign test). Pure; no assumption about how the values are distributed.
//!
//! Every p-value here is exact for the sample sizes lab runs (up to [`EXACT_MAX`] values
//! in all): the rank-sum distribution is counted over every way of splitting the pooled
//! values, ties included (mid-ranks), not approximated.

/// Above this many values in all, Mann–Whitney uses the normal approximation (with the
/// tie correction and a continuity correction) instead of counting.
pub const EXACT_MAX: usize = 80;

/// The median of the values (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let s = sorted(v);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// A confidence interval for the median, from order statistics.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize,
)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    /// The probability that an interval made this way covers the true median: at
    /// least the level asked for, or, when there are too few values to reach it, what
    /// the widest interval (smallest to largest) gives.
    pub coverage: f64,
}

/// P(B <= k) for B ~ Binomial(n, 1/2).
pub fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    if k >= n {
        return 1.0;
    }
    // C(n, i) / 2^n, summed in logs so that n in the hundreds stays exact enough.
    let ln2n = n as f64 * std::f64::consts::LN_2;
    (0..=k).map(|i| (ln_choose(n, i) - ln2n).exp()).sum::<f64>()
}

fn ln_choose(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

/// The distribution-free interval for the median: [x(k), x(n+1-k)] of the sorted
/// values (from 1), with the largest k whose coverage 1 - 2 P(B <= k - 1), B ~
/// Binomial(n, 1/2), is at least `level`. With too few values for `level` (five values
/// give at most 93.75%), it is [min, max] with the coverage that has.
pub fn median_interval(v: &[f64], level: f64) -> Option<Interval> {
    let s = sorted(v);
    let n = s.len();
    if n == 0 {
        return None;
    }
    let coverage = |k: usize| 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    let mut k = 1;
    while k < n.div_ceil(2) && coverage(k + 1) >= level {
        k += 1;
    }
    Some(Interval {
        lo: s[k - 1],
        hi: s[n - k],
        coverage: if n == 1 { 0.0 } else { coverage(k) },
    })
}

/// The smallest one-sided p-value Mann–Whitney can give with `n` and `m` values: one
/// over the ways of choosing which `n` of the `n + m` values are the first sample.
pub fn mann_whitney_min_p(n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    (-ln_choose(n + m, n)).exp()
}

/// The smallest one-sided p-value the sign test can give with `n` values.
pub fn sign_test_min_p(n: usize) -> f64 {
    0.5f64.powi(n as i32)
}

/// Mid-ranks of the pooled values, doubled so that they are whole numbers.
fn doubled_ranks(pooled: &[f64]) -> Vec<u64> {
    let mut idx: Vec<usize> = (0..pooled.len()).collect();
    idx.sort_by(|&a, &b| pooled[a].total_cmp(&pooled[b]));
    let mut ranks = vec![0u64; pooled.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && pooled[idx[j + 1]] == pooled[idx[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean, (i + j + 2) / 2; doubled, i + j + 2.
        for &k in &idx[i..=j] {
            ranks[k] = (i + j + 2) as u64;
        }
        i = j + 1;
    }
    ranks
}

/// Mann–Whitney's one-sided p-values for `x` against `y`: (the probability, were both
/// from one distribution, of a rank sum of `x` at most the one seen: small when `x`
/// tends to be smaller; the same for at least: small when `x` tends to be larger).
fn mann_whitney(x: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    let (x, y) = (sorted(x), sorted(y));
    let (n, m) = (x.len(), y.len());
    if n == 0 || m == 0 {
        return None;
    }
    let pooled: Vec<f64> = x.iter().chain(&y).copied().collect();
    let ranks = doubled_ranks(&pooled);
    let seen: u64 = ranks[..n].iter().sum();
    if n + m > EXACT_MAX {
        return Some(normal_approximation(&pooled, n, seen));
    }
    // ways[j][s]: the ways of choosing j of the values seen so far with doubled rank
    // sum s. Counts go past u64 (C(80, 40) is about 1e23): f64 keeps them closely
    // enough for a p-value.
    let total: u64 = ranks.iter().sum();
    let mut ways = vec![vec![0f64; total as usize + 1]; n + 1];
    ways[0][0] = 1.0;
    for (i, &r) in ranks.iter().enumerate() {
        for j in (1..=n.min(i + 1)).rev() {
            let (below, here) = ways.split_at_mut(j);
            for s in (r as usize..=total as usize).rev() {
                here[0][s] += below[j - 1][s - r as usize];
            }
        }
    }
    let all: f64 = ways[n].iter().sum();
    let at_most: f64 = ways[n][..=seen as usize].iter().sum();
    let at_least: f64 = ways[n][seen as usize..].iter().sum();
    Some(((at_most / all).min(1.0), (at_least / all).min(1.0)))
}

fn normal_approximation(pooled: &[f64], n: usize, seen: u64) -> (f64, f64) {
    let total = pooled.len() as f64;
    let (nf, mf) = (n as f64, total - n as f64);
    let mean = nf * (total + 1.0) / 2.0;
    // Tie correction: sum of t^3 - t over groups of equal values.
    let mut s = sorted(pooled);
    s.dedup();
    let ties: f64 = s
        .iter()
        .map(|v| pooled.iter().filter(|p| *p == v).count() as f64)
        .map(|t| t * t * t - t)
        .sum();
    let var = nf * mf / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    let w = seen as f64 / 2.0;
    if var <= 0.0 {
        return (1.0, 1.0);
    }
    let sd = var.sqrt();
    let below = normal_cdf((w - mean + 0.5) / sd);
    let above = 1.0 - normal_cdf((w - mean - 0.5) / sd);
    (below.min(1.0), above.min(1.0))
}

/// The standard normal distribution function.
fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The one-sided p-value of "`x` tends to be smaller than `y`" (Mann–Whitney U).
pub fn less(x: &[f64], y: &[f64]) -> Option<f64> {
    mann_whitney(x, y).map(|p| p.0)
}

/// The two-sided p-value of "`x` and `y` differ" (Mann–Whitney U): twice the smaller
/// one-sided one, at most 1.
pub fn differ(x: &[f64], y: &[f64]) -> Option<f64> {
    mann_whitney(x, y).map(|(a, b)| (2.0 * a.min(b)).min(1.0))
}

/// The one-sided p-value of "the values lie below `c`" (the sign test: values equal
/// to `c` are left out).
pub fn below(x: &[f64], c: f64) -> Option<f64> {
    let n = x.iter().filter(|v| **v != c).count();
    if n == 0 {
        return None;
    }
    let k = x.iter().filter(|v| **v < c).count();
    // P(B >= k) = 1 - P(B <= k - 1).
    Some(if k == 0 {
        1.0
    } else {
        1.0 - binomial_half_cdf(n, k - 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn medians_and_their_intervals_from_order_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        // Five values reach 93.75% at most: [min, max].
        let i = median_interval(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.95).unwrap();
        assert_eq!((i.lo, i.hi), (1.0, 5.0));
        assert!(close(i.coverage, 1.0 - 2.0 / 32.0));
        // Six reach 96.9% with [x(1), x(6)]; the next, [x(2), x(5)], has 78.1%.
        let i = median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.95).unwrap();
        assert_eq!((i.lo, i.hi), (1.0, 6.0));
        assert!(close(i.coverage, 1.0 - 2.0 / 64.0));
        // Twenty: [x(6), x(15)], coverage 95.86% (a table value).
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let i = median_interval(&v, 0.95).unwrap();
        assert_eq!((i.lo, i.hi), (6.0, 15.0));
        assert!((i.coverage - 0.9586).abs() < 1e-4, "{}", i.coverage);
        assert_eq!(median_interval(&[7.0], 0.95).unwrap().coverage, 0.0);
    }

    #[test]
    fn mann_whitney_is_exact_on_small_samples() {
        // Completely apart, five and five: one way in C(10, 5) = 252.
        let (x, y) = ([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!(close(less(&x, &y).unwrap(), 1.0 / 252.0));
        assert!(close(less(&y, &x).unwrap(), 1.0));
        assert!(close(differ(&x, &y).unwrap(), 2.0 / 252.0));
        assert!(close(mann_whitney_min_p(5, 5), 1.0 / 252.0));
        // Three and three, apart: 1/20, as small as three runs each can give.
        assert!(close(
            less(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap(),
            0.05
        ));
        // x = {1, 3}, y = {2, 4}: rank sum of x is 4; sums over the 6 ways are
        // 3,4,5,5,6,7, so P(W <= 4) = 2/6.
        assert!(close(less(&[1.0, 3.0], &[2.0, 4.0]).unwrap(), 2.0 / 6.0));
        // Ties share ranks: all equal says nothing.
        assert!(close(
            differ(&[1.0, 1.0, 1.0], &[1.0, 1.0, 1.0]).unwrap(),
            1.0
        ));
        // With one tie across samples: x = {1, 2}, y = {2, 3}: mid-ranks 1, 2.5 | 2.5,
        // 4; x's sum 3.5, over the 6 ways 3.5,3.5,5,5,6.5,6.5: P(W <= 3.5) = 2/6.
        assert!(close(less(&[1.0, 2.0], &[2.0, 3.0]).unwrap(), 2.0 / 6.0));
        assert_eq!(less(&[], &[1.0]), None);
    }

    #[test]
    fn mann_whitney_agrees_with_the_normal_approximation_on_large_samples() {
        // Shifted by a little: the exact count and the approximation agree closely
        // where both apply (40 + 40 values, exact), and past EXACT_MAX the
        // approximation is used.
        let x: Vec<f64> = (0..40).map(|i| f64::from(i) * 1.0).collect();
        let y: Vec<f64> = (0..40).map(|i| f64::from(i) * 1.0 + 6.5).collect();
        let exact = less(&x, &y).unwrap();
        let pooled: Vec<f64> = x.iter().chain(&y).copied().collect();
        let ranks = doubled_ranks(&pooled);
        let seen = ranks[..40].iter().sum();
        let approx = normal_approximation(&pooled, 40, seen).0;
        assert!((exact - approx).abs() < 0.005, "{exact} against {approx}");
        assert!(exact < 0.05 && exact > 0.001, "{exact}");
        let big: Vec<f64> = (0..60).map(f64::from).collect();
        let shifted: Vec<f64> = big.iter().map(|v| v + 100.0).collect();
        assert!(less(&big, &shifted).unwrap() < 1e-10);
    }

    #[test]
    fn the_sign_test_counts_values_on_each_side() {
        assert!(close(
            below(&[1.0, 2.0, 3.0, 4.0, 5.0], 10.0).unwrap(),
            1.0 / 32.0
        ));
        // Four of five below: P(B >= 4) = 6/32.
        assert!(close(
            below(&[1.0, 2.0, 3.0, 4.0, 11.0], 10.0).unwrap(),
            6.0 / 32.0
        ));
        // A value equal to the constant is left out: four, all below.
        assert!(close(
            below(&[1.0, 2.0, 3.0, 4.0, 10.0], 10.0).unwrap(),
            1.0 / 16.0
        ));
        assert!(close(below(&[11.0, 12.0], 10.0).unwrap(), 1.0));
        assert_eq!(below(&[10.0], 10.0), None);
        assert!(close(sign_test_min_p(5), 1.0 / 32.0));
    }
}
