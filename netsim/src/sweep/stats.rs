//! Mean, standard deviation and a 95 % confidence interval of a small sample (Student's
//! t, with exact critical values for small samples).

use serde::Serialize;

/// Two-sided 95 % critical values of Student's t, t(0.975; df), for df = 1..=30.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The 97.5 % quantile of the standard normal distribution.
const Z_975: f64 = 1.959_964;

/// t(0.975; df): the table up to 30 degrees of freedom, then the Cornish–Fisher expansion
/// around the normal quantile (within 0.001 of the exact value beyond 30).
pub fn t_critical_95(df: usize) -> Option<f64> {
    if df == 0 {
        return None;
    }
    if let Some(t) = T_975.get(df - 1) {
        return Some(*t);
    }
    let z = Z_975;
    let n = df as f64;
    Some(
        z + (z.powi(3) + z) / (4.0 * n)
            + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n),
    )
}

/// A sample's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator); 0 for one value.
    pub sd: f64,
    /// Half-width of the 95 % confidence interval of the mean, t(0.975; n − 1) × sd / √n;
    /// `None` for a single value.
    pub ci95: Option<f64>,
}

impl Estimate {
    /// The statistics of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        // A constant sample has that mean and no spread, exactly (no rounding noise).
        let mean = if lo == hi {
            lo
        } else {
            values.iter().sum::<f64>() / n as f64
        };
        let sd = if n > 1 && lo != hi {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        // Values near f64::MAX overflow the sums above: then the same, on values scaled
        // down by the largest magnitude (only then, so that other samples' results do
        // not move by a rounding).
        let (mean, sd) = if mean.is_finite() && sd.is_finite() {
            (mean, sd)
        } else {
            let m = lo.abs().max(hi.abs());
            if m.is_finite() && m > 0.0 {
                let mean = values.iter().map(|v| v / m).sum::<f64>() / n as f64;
                let sd = (values.iter().map(|v| (v / m - mean).powi(2)).sum::<f64>()
                    / (n - 1).max(1) as f64)
                    .sqrt();
                (mean * m, sd * m)
            } else {
                (mean, sd)
            }
        };
        let ci95 = t_critical_95(n - 1).map(|t| t * sd / (n as f64).sqrt());
        Some(Self { n, mean, sd, ci95 })
    }

    /// The interval's lower end (the mean for a single value).
    pub fn low(&self) -> f64 {
        self.mean - self.ci95.unwrap_or(0.0)
    }

    /// The interval's upper end (the mean for a single value).
    pub fn high(&self) -> f64 {
        self.mean + self.ci95.unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_values_match_the_tables() {
        assert_eq!(t_critical_95(0), None);
        assert_eq!(t_critical_95(1), Some(12.706));
        assert_eq!(t_critical_95(2), Some(4.303));
        assert_eq!(t_critical_95(9), Some(2.262));
        assert_eq!(t_critical_95(29), Some(2.045));
        assert_eq!(t_critical_95(30), Some(2.042));
        assert!((t_critical_95(1_000_000).unwrap() - 1.960).abs() < 0.001);
        // Exact: 2.021 (40), 2.000 (60), 1.980 (120), 1.962 (1000).
        for (df, exact) in [(40, 2.021), (60, 2.000), (120, 1.980), (1000, 1.962)] {
            let t = t_critical_95(df).unwrap();
            assert!((t - exact).abs() < 0.001, "df {df}: {t}");
        }
    }

    #[test]
    fn a_small_sample() {
        let e = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(e.n, 3);
        assert_eq!(e.mean, 2.0);
        assert_eq!(e.sd, 1.0);
        let half = 4.303 / 3f64.sqrt();
        assert!((e.ci95.unwrap() - half).abs() < 1e-12);
        assert!((e.low() - (2.0 - half)).abs() < 1e-12);
        let same = Estimate::of(&[0.455; 10]).unwrap();
        assert_eq!((same.mean, same.sd, same.ci95), (0.455, 0.0, Some(0.0)));
        let one = Estimate::of(&[5.0]).unwrap();
        assert_eq!(
            (one.sd, one.ci95, one.low(), one.high()),
            (0.0, None, 5.0, 5.0)
        );
        assert_eq!(Estimate::of(&[]), None);
        // Sums that overflow: the statistics of values near the largest f64 are numbers.
        let big = Estimate::of(&[f64::MAX, f64::MAX / 2.0, f64::MAX / 4.0]).unwrap();
        assert!(big.mean.is_finite() && big.sd.is_finite(), "{big:?}");
        assert!((big.mean / f64::MAX - 7.0 / 12.0).abs() < 1e-12, "{big:?}");
        let sd = ((25.0 + 1.0 + 16.0) / 144.0 / 2.0_f64).sqrt();
        assert!((big.sd / f64::MAX - sd).abs() < 1e-12, "{big:?}");
    }
}
